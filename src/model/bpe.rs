//! A pure-Rust tokenizer for GGUF byte-level BPE vocabularies (`tokenizer.ggml.model = gpt2`),
//! giving the token ids llama.cpp's tokenizer gives, so the portable engine codes the same
//! token streams without llama.cpp.
//!
//! It follows llama.cpp's `llama-vocab.cpp` / `unicode.cpp` (llama-cpp-sys-2 0.1.161) step by
//! step, because "the same regex" is not enough — llama.cpp implements it its own way:
//! 1. **User-defined tokens** (type 4) are split out of the text first, longest first, each
//!    at its leftmost occurrences (control and unknown tokens are not: lmz tokenizes with
//!    `parse_special = false`).
//! 2. **Pre-tokenizer** `smollm` (also `starcoder`, `refact`, `command-r`, …): the regexes
//!    `\p{N}` (every number codepoint its own word), then on each piece the GPT-2 pattern
//!    `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)`, which llama.cpp
//!    runs as hand-written code (`unicode_regex_split_custom_gpt2`): the contractions are
//!    lowercase only, and the lookahead `\s+(?!\S)` sees the end of a piece as "not \S", so a
//!    run of spaces before a digit stays whole. Letter/number/whitespace classes are
//!    llama.cpp's own tables ([`unicode`], generated from its source), not Rust's.
//! 3. **Byte-level BPE** per word: the word's bytes, GPT-2 byte-encoded, are merged pair by
//!    pair, lowest merge rank first, leftmost first among equal ranks (llama.cpp's priority
//!    queue). A final symbol that is no token falls back to the tokens of its single encoded
//!    bytes, skipping bytes without one (as llama.cpp does; the caller's piece check catches
//!    the loss).
//!
//! Pieces ([`Bpe::piece`]), the bytes each token stands for: a normal token (type 1), the GPT-2
//! byte decoding of its text (empty if some character of it is no GPT-2 byte); a
//! user-defined token (type 4), its text as is; every other type (control, unknown, unused,
//! byte, undefined) empty: never emitted by the coders.
//!
//! Speed: each distinct word is merged once per call (a word cache), the merge table is a
//! hash map on interned symbol ids.

mod unicode;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use super::gguf::Gguf;
use crate::error::{Error, Result};
use unicode::Class;

/// GGUF token types (`llama_token_type`).
pub mod token_type {
    pub const NORMAL: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const CONTROL: i32 = 3;
    pub const USER_DEFINED: i32 = 4;
    pub const UNUSED: i32 = 5;
    pub const BYTE: i32 = 6;
}

/// GPT-2's byte → character map (`bytes_to_unicode`): printable Latin-1 bytes stand for
/// themselves, the other 68 for U+0100 onwards, in byte order.
pub fn byte_to_char(b: u8) -> char {
    const fn table() -> [u32; 256] {
        let mut t = [0u32; 256];
        let mut n = 0;
        let mut b = 0;
        while b < 256 {
            let direct = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || b >= 0xae;
            t[b] = if direct {
                b as u32
            } else {
                n += 1;
                255 + n
            };
            b += 1;
        }
        t
    }
    const T: [u32; 256] = table();
    char::from_u32(T[b as usize]).unwrap_or('\0')
}

/// The inverse of [`byte_to_char`].
pub fn char_to_byte(c: char) -> Option<u8> {
    let c = c as u32;
    match c {
        0x21..=0x7e | 0xa1..=0xac | 0xae..=0xff => Some(c as u8),
        0x100..=0x143 => {
            // The n-th byte not mapped to itself.
            let n = c - 0x100;
            (0..=255u8)
                .filter(|&b| byte_to_char(b) as u32 >= 0x100)
                .nth(n as usize)
        }
        _ => None,
    }
}

/// The pre-tokenizers this tokenizer implements (`tokenizer.ggml.pre`): those llama.cpp runs
/// with exactly the `\p{N}` + GPT-2 regexes.
const PRE_TOKENIZERS: &[&str] = &[
    "smollm",
    "starcoder",
    "refact",
    "command-r",
    "codeshell",
    "exaone",
    "minerva-7b",
    "mellum2",
];

/// No such token or symbol.
const NONE: u32 = u32::MAX;

pub struct Bpe {
    pieces: Vec<Vec<u8>>,
    /// Token text (byte-encoded, as in the GGUF) → id; the last of equal texts wins, as in
    /// llama.cpp's `token_to_id`.
    token_of: HashMap<Vec<u8>, u32>,
    /// Interned symbol id of each byte's encoded character (every byte has one).
    byte_sym: [u32; 256],
    /// (left symbol, right symbol) → (rank, merged symbol); the first of equal merges wins.
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// Symbol id → token id (`NONE` when the symbol's text is no token).
    sym_token: Vec<u32>,
    /// Token of each single byte of encoded text, for the fallback (`NONE` if none).
    byte_token: [u32; 256],
    /// User-defined tokens: (text, id), longest first, then by id.
    user: Vec<(Vec<u8>, u32)>,
}

fn bad(g: &Gguf, key: &str, detail: impl std::fmt::Display) -> Error {
    Error::ModelUnavailable {
        detail: format!("GGUF: {key}: {detail} (at byte {})", g.offset_of(key)),
    }
}

/// UTF-8 encoding of the GPT-2 characters of `bytes`.
fn encode_bytes(bytes: &[u8], out: &mut Vec<u8>) {
    for &b in bytes {
        let mut buf = [0u8; 4];
        out.extend_from_slice(byte_to_char(b).encode_utf8(&mut buf).as_bytes());
    }
}

impl Bpe {
    /// Builds the tokenizer from a GGUF file's `tokenizer.ggml.*` keys. Errors name the key:
    /// another tokenizer model or pre-tokenizer, missing or malformed arrays.
    pub fn from_gguf(g: &Gguf) -> Result<Bpe> {
        let model = g.require("tokenizer.ggml.model", Gguf::get_str)?;
        if model != "gpt2" {
            return Err(bad(
                g,
                "tokenizer.ggml.model",
                format_args!("tokenizer {model:?} is not byte-level BPE (gpt2)"),
            ));
        }
        let pre = g.get_str("tokenizer.ggml.pre")?.unwrap_or("default");
        if !PRE_TOKENIZERS.contains(&pre) {
            return Err(bad(
                g,
                "tokenizer.ggml.pre",
                format_args!(
                    "pre-tokenizer {pre:?} is not implemented (only {})",
                    PRE_TOKENIZERS.join(", ")
                ),
            ));
        }
        let tokens = g.require("tokenizer.ggml.tokens", Gguf::get_str_array)?;
        if tokens.is_empty() || tokens.len() > i32::MAX as usize {
            return Err(bad(
                g,
                "tokenizer.ggml.tokens",
                format_args!("{} tokens", tokens.len()),
            ));
        }
        let types = match g.get_i32_array("tokenizer.ggml.token_type")? {
            Some(t) if t.len() == tokens.len() => t,
            Some(t) => {
                return Err(bad(
                    g,
                    "tokenizer.ggml.token_type",
                    format_args!("{} types for {} tokens", t.len(), tokens.len()),
                ))
            }
            None => vec![token_type::NORMAL; tokens.len()],
        };
        let merges = g.require("tokenizer.ggml.merges", Gguf::get_str_array)?;
        Ok(Bpe::new(tokens, &types, merges))
    }

    /// Builds the tokenizer from its parts (`types.len() == tokens.len()`).
    pub fn new<T: AsRef<[u8]>, M: AsRef<[u8]>>(tokens: &[T], types: &[i32], merges: &[M]) -> Bpe {
        let mut token_of = HashMap::with_capacity(tokens.len());
        let mut pieces = Vec::with_capacity(tokens.len());
        let mut user = Vec::new();
        for (i, (t, &ty)) in tokens.iter().zip(types).enumerate() {
            let t = t.as_ref();
            // llama.cpp names empty tokens `[EMPTY_<id>]`.
            let text = if t.is_empty() {
                format!("[EMPTY_{i}]").into_bytes()
            } else {
                t.to_vec()
            };
            pieces.push(match ty {
                token_type::NORMAL => std::str::from_utf8(&text)
                    .ok()
                    .and_then(|s| s.chars().map(char_to_byte).collect::<Option<Vec<u8>>>())
                    .unwrap_or_default(),
                token_type::USER_DEFINED => text.clone(),
                _ => Vec::new(),
            });
            if ty == token_type::USER_DEFINED {
                user.push((text.clone(), i as u32));
            }
            token_of.insert(text, i as u32);
        }
        // llama.cpp sorts by length only (std::sort, so equal lengths in no set order); ids
        // break ties here.
        user.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));

        let mut syms: HashMap<Vec<u8>, u32> = HashMap::new();
        let intern = |s: &[u8], syms: &mut HashMap<Vec<u8>, u32>| -> u32 {
            if let Some(&id) = syms.get(s) {
                return id;
            }
            let id = syms.len() as u32;
            syms.insert(s.to_vec(), id);
            id
        };
        let mut byte_sym = [0u32; 256];
        for b in 0..=255u8 {
            let mut e = Vec::new();
            encode_bytes(&[b], &mut e);
            byte_sym[b as usize] = intern(&e, &mut syms);
        }
        let mut merge_map = HashMap::with_capacity(merges.len());
        for (rank, m) in merges.iter().enumerate() {
            let m = m.as_ref();
            // llama.cpp splits at the first space after the first byte; a merge without one
            // becomes ("", ""), which never applies.
            let Some(p) = m.iter().skip(1).position(|&c| c == b' ').map(|p| p + 1) else {
                continue;
            };
            let (a, b) = (&m[..p], &m[p + 1..]);
            if a.is_empty() || b.is_empty() {
                continue;
            }
            let ia = intern(a, &mut syms);
            let ib = intern(b, &mut syms);
            let ab = intern(&[a, b].concat(), &mut syms);
            merge_map.entry((ia, ib)).or_insert((rank as u32, ab));
        }
        let mut sym_token = vec![NONE; syms.len()];
        for (s, &id) in &syms {
            if let Some(&t) = token_of.get(s) {
                sym_token[id as usize] = t;
            }
        }
        let mut byte_token = [NONE; 256];
        for (b, t) in byte_token.iter_mut().enumerate() {
            if let Some(&id) = token_of.get(&[b as u8][..]) {
                *t = id;
            }
        }
        Bpe {
            pieces,
            token_of,
            byte_sym,
            merges: merge_map,
            sym_token,
            byte_token,
            user,
        }
    }

    /// Number of tokens in the vocabulary.
    pub fn len(&self) -> usize {
        self.pieces.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }

    /// The bytes token `id` stands for (see the module doc; empty for ids out of range).
    pub fn piece(&self, id: u32) -> &[u8] {
        self.pieces.get(id as usize).map_or(&[], |p| p.as_slice())
    }

    /// The id of the token whose GGUF text is `text`, as llama.cpp's `text_to_token`.
    pub fn token_id(&self, text: &[u8]) -> Option<u32> {
        self.token_of.get(text).copied()
    }

    /// Tokenizes valid UTF-8 text as llama.cpp's `llama_tokenize(text, add_special = false,
    /// parse_special = false)` does; `None` for invalid UTF-8 (the caller escapes such bytes).
    /// The tokens' pieces need not give back `bytes` exactly (llama.cpp drops bytes it has no
    /// token for): callers check.
    pub fn tokenize(&self, bytes: &[u8]) -> Option<Vec<u32>> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut out = Vec::with_capacity(bytes.len() / 3 + 1);
        let mut cache: HashMap<&[u8], (u32, u32)> = HashMap::new();
        let mut scratch = Scratch::default();
        self.partition(text, 0, &mut |part| match part {
            Part::Token(t) => out.push(t),
            Part::Text(s) => self.tokenize_text(s, &mut out, &mut cache, &mut scratch),
        });
        Some(out)
    }

    /// Splits `text` at the user-defined tokens from `self.user[k..]` on, longest first.
    fn partition<'a>(&self, text: &'a str, k: usize, f: &mut dyn FnMut(Part<'a>)) {
        if text.is_empty() {
            return;
        }
        let Some((tok, id)) = self.user.get(k) else {
            f(Part::Text(text));
            return;
        };
        // Token texts that are not UTF-8 can only match inside a character; llama.cpp would
        // split there, leaving invalid UTF-8 fragments. Such tokens are skipped here.
        let Ok(tok) = std::str::from_utf8(tok) else {
            return self.partition(text, k + 1, f);
        };
        let mut rest = text;
        while let Some(p) = rest.find(tok) {
            self.partition(&rest[..p], k + 1, f);
            f(Part::Token(*id));
            rest = &rest[p + tok.len()..];
        }
        self.partition(rest, k + 1, f);
    }

    fn tokenize_text<'a>(
        &self,
        text: &'a str,
        out: &mut Vec<u32>,
        cache: &mut HashMap<&'a [u8], (u32, u32)>,
        scratch: &mut Scratch,
    ) {
        pre_split(text, &mut |w| self.word(w, out, cache, scratch));
    }

    /// Appends the tokens of one pre-token word.
    fn word<'a>(
        &self,
        w: &'a [u8],
        out: &mut Vec<u32>,
        cache: &mut HashMap<&'a [u8], (u32, u32)>,
        scratch: &mut Scratch,
    ) {
        if let Some(&(s, n)) = cache.get(w) {
            let (s, n) = (s as usize, n as usize);
            out.extend_from_within(s..s + n);
            return;
        }
        let s = out.len();
        self.merge(w, out, scratch);
        if out.len() - s <= u32::MAX as usize && s <= u32::MAX as usize {
            cache.insert(w, (s as u32, (out.len() - s) as u32));
        }
    }

    /// Byte-level BPE of one word (llama.cpp's `llm_tokenizer_bpe_session::tokenize`):
    /// symbols start as the word's bytes (each one encoded character); the adjacent pair of
    /// lowest merge rank, leftmost among equals, merges until none is left.
    fn merge(&self, w: &[u8], out: &mut Vec<u32>, sc: &mut Scratch) {
        let n = w.len();
        sc.sym.clear();
        sc.len.clear();
        sc.next.clear();
        sc.prev.clear();
        sc.heap.clear();
        for (i, &byte) in w.iter().enumerate() {
            sc.sym.push(self.byte_sym[byte as usize]);
            sc.len.push(1);
            sc.prev.push(if i == 0 { NONE } else { i as u32 - 1 });
            sc.next.push(if i + 1 == n { NONE } else { i as u32 + 1 });
        }
        let push = |sc: &mut Scratch, l: u32, r: u32| {
            if l == NONE || r == NONE {
                return;
            }
            let (ls, rs) = (sc.sym[l as usize], sc.sym[r as usize]);
            if let Some(&(rank, _)) = self.merges.get(&(ls, rs)) {
                sc.heap.push(Reverse((rank, l, r, ls, rs)));
            }
        };
        for i in 1..n as u32 {
            push(sc, i - 1, i);
        }
        while let Some(Reverse((_, l, r, ls, rs))) = sc.heap.pop() {
            let (li, ri) = (l as usize, r as usize);
            // Stale: one side has merged since (llama.cpp compares the texts).
            if sc.len[li] == 0 || sc.len[ri] == 0 || sc.sym[li] != ls || sc.sym[ri] != rs {
                continue;
            }
            let (_, merged) = self.merges[&(ls, rs)];
            sc.sym[li] = merged;
            sc.len[li] += sc.len[ri];
            sc.len[ri] = 0;
            let nx = sc.next[ri];
            sc.next[li] = nx;
            if nx != NONE {
                sc.prev[nx as usize] = l;
            }
            push(sc, sc.prev[li], l);
            push(sc, l, nx);
        }
        let mut i = if n == 0 { NONE } else { 0 };
        while i != NONE {
            let iu = i as usize;
            let t = self.sym_token[sc.sym[iu] as usize];
            if t != NONE {
                out.push(t);
            } else {
                sc.enc.clear();
                encode_bytes(&w[iu..iu + sc.len[iu] as usize], &mut sc.enc);
                out.extend(
                    sc.enc
                        .iter()
                        .map(|&b| self.byte_token[b as usize])
                        .filter(|&t| t != NONE),
                );
            }
            i = sc.next[iu];
        }
    }
}

enum Part<'a> {
    Text(&'a str),
    Token(u32),
}

/// A merge candidate: (rank, left, right, left symbol, right symbol).
type Bigram = (u32, u32, u32, u32, u32);

#[derive(Default)]
struct Scratch {
    sym: Vec<u32>,
    len: Vec<u32>,
    prev: Vec<u32>,
    next: Vec<u32>,
    /// (rank, left, right, left symbol, right symbol): smallest rank, then leftmost first.
    heap: BinaryHeap<Reverse<Bigram>>,
    enc: Vec<u8>,
}

/// The `smollm` pre-tokenizer: calls `f` on each word of `text`, in order.
pub(crate) fn pre_split<'a>(text: &'a str, f: &mut dyn FnMut(&'a [u8])) {
    let cpts: Vec<(u32, Class, usize)> = text
        .char_indices()
        .map(|(i, c)| (c as u32, unicode::class(c as u32), i))
        .collect();
    let b = text.as_bytes();
    let byte_at = |i: usize| cpts.get(i).map_or(b.len(), |c| c.2);
    // `\p{N}`: each number codepoint is a piece of its own; the GPT-2 split runs on the
    // pieces between.
    let mut start = 0;
    for i in 0..=cpts.len() {
        if i == cpts.len() || cpts[i].1 == Class::Number {
            split_gpt2(&cpts[start..i], &mut |s, e| {
                f(&b[byte_at(start + s)..byte_at(start + e)]);
            });
            if i < cpts.len() {
                f(&b[byte_at(i)..byte_at(i + 1)]);
            }
            start = i + 1;
        }
    }
}

/// llama.cpp's `unicode_regex_split_custom_gpt2` on one piece: calls `emit(start, end)` (in
/// codepoints of `c`) for each word, in order.
fn split_gpt2(c: &[(u32, Class, usize)], emit: &mut dyn FnMut(usize, usize)) {
    let end = c.len();
    let cpt = |i: usize| c.get(i).map(|x| x.0);
    let class = |i: usize| c.get(i).map(|x| x.1);
    let mut prev = 0;
    let mut pos = 0;
    let mut add = |to: usize, prev: &mut usize| {
        if to > *prev {
            emit(*prev, to);
        }
        *prev = to;
    };
    while pos < end {
        let ch = c[pos].0;
        // 's|'t|'re|'ve|'m|'ll|'d
        if ch == '\'' as u32 && pos + 1 < end {
            let n = c[pos + 1].0;
            if [b's', b't', b'm', b'd'].iter().any(|&x| n == x as u32) {
                pos += 2;
                add(pos, &mut prev);
                continue;
            }
            if pos + 2 < end {
                let nn = c[pos + 2].0;
                let pair = |a: u8, b: u8| n == a as u32 && nn == b as u32;
                if pair(b'r', b'e') || pair(b'v', b'e') || pair(b'l', b'l') {
                    pos += 3;
                    add(pos, &mut prev);
                    continue;
                }
            }
        }
        let space = ch == ' ' as u32;
        let c2 = if space { class(pos + 1) } else { class(pos) };
        // ' ?\p{L}+', ' ?\p{N}+', ' ?[^\s\p{L}\p{N}]+'
        if let Some(k @ (Class::Letter | Class::Number | Class::Other)) = c2 {
            pos += space as usize;
            while class(pos) == Some(k) {
                pos += 1;
            }
            add(pos, &mut prev);
            continue;
        }
        let mut ws = 0;
        while class(pos + ws) == Some(Class::Whitespace) {
            ws += 1;
        }
        // '\s+(?!\S)': all but the last whitespace when something follows in the piece.
        if ws > 1 && cpt(pos + ws).is_some() {
            pos += ws - 1;
            add(pos, &mut prev);
            continue;
        }
        // '\s+'
        if ws > 0 {
            pos += ws;
            add(pos, &mut prev);
            continue;
        }
        pos += 1;
        add(pos, &mut prev);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<&str> {
        let mut w = Vec::new();
        pre_split(text, &mut |x| w.push(std::str::from_utf8(x).unwrap()));
        assert_eq!(w.concat(), text);
        w
    }

    #[test]
    fn gpt2_byte_map() {
        let mut seen = std::collections::HashSet::new();
        for b in 0..=255u8 {
            let c = byte_to_char(b);
            assert!(seen.insert(c));
            assert_eq!(char_to_byte(c), Some(b));
        }
        assert_eq!(byte_to_char(b' '), 'Ġ');
        assert_eq!(byte_to_char(b'\n'), 'Ċ');
        assert_eq!(byte_to_char(b'A'), 'A');
        assert_eq!(char_to_byte('\u{144}'), None);
        assert_eq!(char_to_byte(' '), None);
    }

    #[test]
    fn smollm_pre_tokenizer() {
        assert_eq!(
            words("Hello world's 123  abc\n\n  x"),
            ["Hello", " world", "'s", " ", "1", "2", "3", " ", " abc", "\n\n ", " x"]
        );
        assert_eq!(
            words("don't I'M we'll"),
            ["don", "'t", " I", "'", "M", " we", "'ll"]
        );
        assert_eq!(words("a  "), ["a", "  "]);
        assert_eq!(words("x!!! y ?!"), ["x", "!!!", " y", " ?!"]);
        assert_eq!(words("é2½x"), ["é", "2", "½", "x"]);
        assert_eq!(words("\u{3000}x"), ["\u{3000}", "x"]);
        assert_eq!(words("  7"), ["  ", "7"]);
        assert_eq!(words("a 7"), ["a", " ", "7"]);
        assert_eq!(words("'"), ["'"]);
        assert_eq!(words("'re"), ["'re"]);
        assert_eq!(words("x'r"), ["x", "'", "r"]);
        assert_eq!(words("\t\tfoo"), ["\t", "\t", "foo"]);
        assert_eq!(words(""), Vec::<&str>::new());
        assert_eq!(words("日本語テキスト"), ["日本語テキスト"]);
        assert_eq!(words(" 😀😀 x"), [" 😀😀", " x"]);
    }

    /// The class table against llama.cpp's own data, where its source is at hand (the
    /// vendored copy in cargo's registry).
    #[test]
    fn classes_match_llama_cpp() {
        let home = std::env::var_os("CARGO_HOME")
            .map(std::path::PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".cargo")));
        let src = home.and_then(|h| {
            std::fs::read_dir(h.join("registry/src"))
                .ok()?
                .flatten()
                .find_map(|d| {
                    let p = d
                        .path()
                        .join("llama-cpp-sys-2-0.1.161/llama.cpp/src/unicode-data.cpp");
                    p.exists().then_some(p)
                })
        });
        let Some(src) = src else {
            eprintln!("note: llama.cpp's unicode-data.cpp not found; skipping");
            return;
        };
        let s = std::fs::read_to_string(src).unwrap();
        let section = |name: &str| {
            let a = s.find(name).unwrap();
            &s[a..a + s[a..].find("};").unwrap()]
        };
        let hex = |t: &str| u32::from_str_radix(t.trim().trim_start_matches("0x"), 16).unwrap();
        let mut ranges = Vec::new();
        for line in section("unicode_ranges_flags = {").lines().skip(1) {
            let line = line.trim().trim_start_matches('{').trim_end_matches("},");
            if let Some((a, b)) = line.split_once(',') {
                ranges.push((hex(a), hex(b)));
            }
        }
        let ws: Vec<u32> = section("unicode_set_whitespace = {")
            .lines()
            .skip(1)
            .filter_map(|l| l.trim().strip_suffix(','))
            .map(hex)
            .collect();
        assert!(ranges.len() > 1000 && ws.len() == 25);
        for w in ranges.windows(2) {
            let (start, flags) = w[0];
            let want = |c: u32| {
                if ws.contains(&c) {
                    Class::Whitespace
                } else if flags & 4 != 0 {
                    Class::Letter
                } else if flags & 2 != 0 {
                    Class::Number
                } else {
                    Class::Other
                }
            };
            for c in start..w[1].0 {
                assert_eq!(unicode::class(c), want(c), "U+{c:04X}");
            }
        }
    }

    fn tiny() -> Bpe {
        // Tokens: the 256 byte characters, then merge results; a user-defined and a control
        // token.
        let mut tokens: Vec<String> = (0..=255u8).map(|b| byte_to_char(b).to_string()).collect();
        let merges = ["Ġ t", "h e", "Ġt he", "Ġ a", "i n", "Ġa n", "Ġan d"];
        for m in merges {
            tokens.push(m.replace(' ', ""));
        }
        tokens.push("<ctl>".into());
        tokens.push("<user>".into());
        let mut types = vec![token_type::NORMAL; tokens.len()];
        let n = types.len();
        types[n - 2] = token_type::CONTROL;
        types[n - 1] = token_type::USER_DEFINED;
        Bpe::new(&tokens, &types, &merges)
    }

    #[test]
    fn merges_and_pieces() {
        let b = tiny();
        let id = |s: &str| b.token_id(s.as_bytes()).unwrap();
        let t = b.tokenize(b" the and in<user>the<ctl>").unwrap();
        let mut want = vec![id("Ġthe"), id("Ġand"), id("Ġ"), id("in"), id("<user>")];
        want.extend([
            id("t"),
            id("he"),
            id("<"),
            id("c"),
            id("t"),
            id("l"),
            id(">"),
        ]);
        assert_eq!(t, want);
        let back: Vec<u8> = t.iter().flat_map(|&x| b.piece(x).to_vec()).collect();
        assert_eq!(back, b" the and in<user>the<ctl>");
        assert_eq!(b.piece(id("Ġthe")), b" the");
        assert_eq!(b.piece(id("<ctl>")), b"");
        assert_eq!(b.piece(id("<user>")), b"<user>");
        assert_eq!(b.piece(u32::MAX), b"");
        assert_eq!(b.tokenize(b"\xff"), None);
        assert_eq!(b.tokenize(b"").unwrap(), Vec::<u32>::new());
        // Every byte string survives (each byte has a token here).
        let s = "héllo wörld 12 ½ — \u{3000}x\r\n\t";
        let t = b.tokenize(s.as_bytes()).unwrap();
        let back: Vec<u8> = t.iter().flat_map(|&x| b.piece(x).to_vec()).collect();
        assert_eq!(back, s.as_bytes());
    }

    #[test]
    fn leftmost_among_equal_ranks() {
        // "aaa": the merge "a a" applies at the left pair first: "aa" + "a".
        let mut tokens: Vec<String> = (0..=255u8).map(|b| byte_to_char(b).to_string()).collect();
        tokens.push("aa".into());
        let types = vec![token_type::NORMAL; tokens.len()];
        let b = Bpe::new(&tokens, &types, &["a a"]);
        let id = |s: &str| b.token_id(s.as_bytes()).unwrap();
        assert_eq!(b.tokenize(b"aaa").unwrap(), [id("aa"), id("a")]);
        assert_eq!(b.tokenize(b"aaaa").unwrap(), [id("aa"), id("aa")]);
    }

    fn default_model() -> Option<std::path::PathBuf> {
        let p =
            crate::model::fetch::cache_dir()?.join(crate::model::fetch::DEFAULT_MODEL.file_name);
        p.exists().then_some(p)
    }

    const CORPUS: &str = "/work/shared/corpus";

    #[test]
    fn default_model_round_trips_and_speed() {
        let Some(path) = default_model() else {
            eprintln!("note: default model absent; skipping");
            return;
        };
        let g = Gguf::open(&path).unwrap();
        let t0 = std::time::Instant::now();
        let b = Bpe::from_gguf(&g).unwrap();
        eprintln!("vocabulary built in {:?}", t0.elapsed());
        assert_eq!(b.len(), 49152);
        let Ok(dir) = std::fs::read_dir(CORPUS) else {
            eprintln!("note: {CORPUS} absent; skipping the corpus");
            return;
        };
        let mut files: Vec<_> = dir.flatten().map(|d| d.path()).collect();
        files.sort();
        for f in files {
            let bytes = std::fs::read(&f).unwrap();
            let Ok(text) = std::str::from_utf8(&bytes) else {
                continue;
            };
            let t0 = std::time::Instant::now();
            let toks = b.tokenize(text.as_bytes()).unwrap();
            let dt = t0.elapsed().as_secs_f64();
            let back: Vec<u8> = toks.iter().flat_map(|&x| b.piece(x).to_vec()).collect();
            eprintln!(
                "{}: {} bytes, {} tokens, {:.1} MB/s, pieces {}",
                f.display(),
                bytes.len(),
                toks.len(),
                bytes.len() as f64 / dt / 1e6,
                if back == bytes {
                    "give the text back"
                } else {
                    "differ (bytes without a token are dropped, as by llama.cpp)"
                }
            );
            // Plain text has a token for every byte it uses.
            let name = f.file_name().unwrap().to_string_lossy();
            if name.ends_with(".txt") || name.starts_with("html") {
                assert!(back == bytes, "{name}");
                assert!(
                    bytes.len() < 100_000 || bytes.len() as f64 / dt > 1e6,
                    "{name} too slow"
                );
            }
        }
    }

    /// The same tokens as llama.cpp's tokenizer (through `LlamaLm`, the `Model` contract:
    /// whole text, else line by line, else byte tokens; invalid UTF-8 as byte tokens), on
    /// every file of the shared corpus; and the same pieces for every token.
    #[cfg(feature = "llama")]
    #[test]
    fn same_tokens_as_llama_cpp() {
        use crate::model::Model;
        let Some(path) = default_model() else {
            eprintln!("note: default model absent; skipping");
            return;
        };
        let Ok(dir) = std::fs::read_dir(CORPUS) else {
            eprintln!("note: {CORPUS} absent; skipping");
            return;
        };
        let file = crate::model::fetch::ModelFile {
            path: path.clone(),
            sha256: [0; 32],
            size: 0,
            name: "default".into(),
        };
        let llama = crate::model::llama::LlamaLm::load(&file, 1 << 20, Default::default()).unwrap();
        let b = Bpe::from_gguf(&Gguf::open(&path).unwrap()).unwrap();
        let n = b.len() as u32;
        let mut piece_diffs = 0;
        for t in 0..n {
            if llama.piece(t) != b.piece(t) {
                piece_diffs += 1;
                eprintln!(
                    "piece {t}: llama {:?}, bpe {:?}",
                    llama.piece(t),
                    b.piece(t)
                );
            }
        }
        let c = Contract::new(&b);
        let mut files: Vec<_> = dir.flatten().map(|d| d.path()).collect();
        files.sort();
        let mut bad = 0;
        for f in files {
            let bytes = std::fs::read(&f).unwrap();
            let want = llama.tokenize(&bytes).unwrap();
            let got = c.tokenize(&bytes).unwrap();
            let first = want.iter().zip(&got).position(|(a, b)| a != b);
            let same = want == got;
            eprintln!(
                "{}: llama.cpp {} tokens, bpe {} tokens: {}",
                f.display(),
                want.len(),
                got.len(),
                if same {
                    "identical".to_string()
                } else {
                    format!("differ from token {first:?}")
                }
            );
            if !same {
                bad += 1;
                let i = first.unwrap_or(want.len().min(got.len()));
                let show = |v: &[u32]| -> String {
                    v[i.saturating_sub(3)..(i + 5).min(v.len())]
                        .iter()
                        .map(|&t| format!("{t}:{:?}", String::from_utf8_lossy(&c.piece(t))))
                        .collect::<Vec<_>>()
                        .join(" ")
                };
                eprintln!("  llama.cpp: {}\n  bpe:       {}", show(&want), show(&got));
            }
        }
        assert_eq!((piece_diffs, bad), (0, 0));
    }

    /// `Model::tokenize`'s contract over a [`Bpe`], as `LlamaLm` implements it over
    /// llama.cpp's tokenizer: raw-byte escapes are symbols `n..n+256`.
    #[cfg(feature = "llama")]
    struct Contract<'a> {
        bpe: &'a Bpe,
        byte_token: [Option<u32>; 256],
    }

    #[cfg(feature = "llama")]
    impl<'a> Contract<'a> {
        fn new(bpe: &'a Bpe) -> Contract<'a> {
            let n = bpe.len() as u32;
            let mut byte_token = [None; 256];
            for t in (0..n + 256).rev() {
                let p = if t < n {
                    bpe.piece(t).to_vec()
                } else {
                    vec![(t - n) as u8]
                };
                if p.len() == 1 {
                    byte_token[p[0] as usize] = Some(t);
                }
            }
            Contract { bpe, byte_token }
        }

        fn piece(&self, t: u32) -> Vec<u8> {
            let n = self.bpe.len() as u32;
            if t < n {
                self.bpe.piece(t).to_vec()
            } else {
                vec![(t - n) as u8]
            }
        }

        fn matches(&self, toks: &[u32], text: &[u8]) -> bool {
            let back: Vec<u8> = toks.iter().flat_map(|&t| self.piece(t)).collect();
            back == text
        }

        fn bytes(&self, b: &[u8], out: &mut Vec<u32>) -> Option<()> {
            for &x in b {
                out.push(self.byte_token[x as usize]?);
            }
            Some(())
        }

        fn text(&self, text: &[u8], out: &mut Vec<u32>) -> Option<()> {
            if text.is_empty() {
                return Some(());
            }
            let t = self.bpe.tokenize(text)?;
            if self.matches(&t, text) {
                out.extend(t);
                return Some(());
            }
            for line in text.split_inclusive(|&b| b == b'\n') {
                let t = self.bpe.tokenize(line)?;
                if self.matches(&t, line) {
                    out.extend(t);
                } else {
                    self.bytes(line, out)?;
                }
            }
            Some(())
        }

        fn tokenize(&self, bytes: &[u8]) -> Option<Vec<u32>> {
            let mut out = Vec::new();
            let mut rest = bytes;
            loop {
                match std::str::from_utf8(rest) {
                    Ok(_) => {
                        self.text(rest, &mut out)?;
                        return Some(out);
                    }
                    Err(e) => {
                        let (valid, after) = rest.split_at(e.valid_up_to());
                        self.text(valid, &mut out)?;
                        let bad = e.error_len().unwrap_or(after.len());
                        self.bytes(&after[..bad], &mut out)?;
                        rest = &after[bad..];
                    }
                }
            }
        }
    }
}
