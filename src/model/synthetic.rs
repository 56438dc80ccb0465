//! A tiny, deterministic Llama-architecture GGUF model for tests and golden vectors.
//!
//! The portable engine must give bit-exact results on every machine, and its tests need a
//! model that is small enough to commit, loads in microseconds, and still exercises every
//! code path the real model does: every weight type (Q4_0, Q4_1, Q8_0, F16, F32; norms F32),
//! grouped-query attention, RoPE, a separate `output.weight`, a vocabulary size that is no
//! multiple of 16, and a real byte-level BPE vocabulary (the 256 GPT-2 byte tokens, merges
//! learned from a paragraph of English, control tokens, one user-defined token) so that
//! tokenization is not trivial. Keys and tensor names are those of llama.cpp and of the
//! SmolLM2 file, so llama.cpp loads it too.
//!
//! Weights come from splitmix64 (committed here) through integer and basic IEEE arithmetic
//! only (no `ln`/`cos`, whose last bits vary between C libraries), so [`tiny_llama`]
//! regenerates `format-spec/vectors/model/tiny-llama.gguf` byte for byte anywhere.

use std::collections::BTreeMap;

use super::bpe::{byte_to_char, pre_split, token_type};
use super::gguf::{ggml_type as ty, Array, Value};
use super::gguf_write::{encode, string, strings, GgufWriter};

/// The seed of the committed file.
pub const SEED: u64 = 0x6c6d_7a5f_7469_6e79; // "lmz_tiny"

/// Where the committed file lives, relative to the crate root.
pub const COMMITTED_PATH: &str = "format-spec/vectors/model/tiny-llama.gguf";

/// The model's shape.
pub const N_EMBD: usize = 64;
pub const N_LAYER: usize = 2;
pub const N_HEAD: usize = 4;
pub const N_HEAD_KV: usize = 2;
pub const HEAD_DIM: usize = N_EMBD / N_HEAD;
pub const N_FF: usize = 96;
pub const N_CTX: u32 = 256;
pub const ROPE_BASE: f32 = 10000.0;
pub const RMS_EPS: f32 = 1e-5;
/// Merges learned from [`TRAINING_TEXT`].
pub const N_MERGES: usize = 40;

/// Control tokens first (ids 0, 1, 2), as in SmolLM2.
const CONTROL: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
pub const BOS: u32 = 1;
pub const EOS: u32 = 2;
/// The one user-defined token (last id): split out of text before BPE.
pub const USER_TOKEN: &str = "<tiny>";

/// What the merges are learned from (Lewis Carroll, 1865; public domain).
pub const TRAINING_TEXT: &str = "Alice was beginning to get very tired of sitting by her sister \
on the bank, and of having nothing to do: once or twice she had peeped into the book her \
sister was reading, but it had no pictures or conversations in it, 'and what is the use of a \
book,' thought Alice 'without pictures or conversations?' So she was considering in her own \
mind (as well as she could, for the hot day made her feel very sleepy and stupid), whether \
the pleasure of making a daisy-chain would be worth the trouble of getting up and picking the \
daisies, when suddenly a White Rabbit with pink eyes ran close by her. There was nothing so \
very remarkable in that; nor did Alice think it so very much out of the way to hear the \
Rabbit say to itself, 'Oh dear! Oh dear! I shall be late!' (when she thought it over \
afterwards, it occurred to her that she ought to have wondered at this, but at the time it \
all seemed quite natural); but when the Rabbit actually took a watch out of its \
waistcoat-pocket, and looked at it, and then hurried on, Alice started to her feet, for it \
flashed across her mind that she had never before seen a rabbit with either a \
waistcoat-pocket, or a watch to take out of it, and burning with curiosity, she ran across \
the field after it, and fortunately was just in time to see it pop down a large \
rabbit-hole under the hedge. In another moment down went Alice after it, never once \
considering how in the world she was to get out again.\n";

/// splitmix64: tiny, well-mixed, and specified by its code.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1), 53 bits.
    fn uniform(&mut self) -> f64 {
        (self.next() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Roughly N(0, 1): the sum of four uniforms, centred and scaled to unit variance
    /// (exact IEEE operations only).
    fn normal(&mut self) -> f64 {
        let s = self.uniform() + self.uniform() + self.uniform() + self.uniform();
        (s - 2.0) * 3f64.sqrt()
    }

    fn normals(&mut self, n: usize, std: f64) -> Vec<f32> {
        (0..n).map(|_| (self.normal() * std) as f32).collect()
    }
}

/// Learns `n` byte-level BPE merges from `text`: the most frequent adjacent pair of symbols
/// within pre-tokenizer words, ties to the smallest pair in byte order.
fn learn_merges(text: &str, n: usize) -> Vec<(String, String)> {
    let mut words: BTreeMap<Vec<String>, usize> = BTreeMap::new();
    pre_split(text, &mut |w| {
        let syms = w.iter().map(|&b| byte_to_char(b).to_string()).collect();
        *words.entry(syms).or_default() += 1;
    });
    let mut merges = Vec::new();
    while merges.len() < n {
        let mut counts: BTreeMap<(&str, &str), usize> = BTreeMap::new();
        for (w, &c) in &words {
            for p in w.windows(2) {
                *counts.entry((p[0].as_str(), p[1].as_str())).or_default() += c;
            }
        }
        // Highest count; among equal counts the first in order (BTreeMap iterates sorted).
        let Some(best) = counts
            .iter()
            .fold(
                None,
                |best: Option<(&(&str, &str), usize)>, (k, &c)| match best {
                    Some((_, bc)) if bc >= c => best,
                    _ => Some((k, c)),
                },
            )
            .map(|(k, _)| (k.0.to_string(), k.1.to_string()))
        else {
            break;
        };
        let mut next = BTreeMap::new();
        for (w, c) in words {
            let mut out: Vec<String> = Vec::with_capacity(w.len());
            let mut i = 0;
            while i < w.len() {
                if i + 1 < w.len() && w[i] == best.0 && w[i + 1] == best.1 {
                    out.push(format!("{}{}", best.0, best.1));
                    i += 2;
                } else {
                    out.push(w[i].clone());
                    i += 1;
                }
            }
            *next.entry(out).or_default() += c;
        }
        words = next;
        merges.push(best);
    }
    merges
}

/// The vocabulary: (tokens, types, merges).
fn vocabulary() -> (Vec<String>, Vec<i32>, Vec<String>) {
    let mut tokens: Vec<String> = CONTROL.iter().map(|s| s.to_string()).collect();
    let mut types = vec![token_type::CONTROL; CONTROL.len()];
    for b in 0..=255u8 {
        tokens.push(byte_to_char(b).to_string());
        types.push(token_type::NORMAL);
    }
    let merges = learn_merges(TRAINING_TEXT, N_MERGES);
    for (a, b) in &merges {
        let t = format!("{a}{b}");
        if !tokens.contains(&t) {
            tokens.push(t);
            types.push(token_type::NORMAL);
        }
    }
    tokens.push(USER_TOKEN.into());
    types.push(token_type::USER_DEFINED);
    let merges = merges
        .into_iter()
        .map(|(a, b)| format!("{a} {b}"))
        .collect();
    (tokens, types, merges)
}

/// Weight types of each layer's matrices, in the order q, k, v, output, gate, up, down:
/// every type appears in every role family at least once across the two layers.
const LAYER_TYPES: [[u32; 7]; N_LAYER] = [
    [
        ty::Q4_0,
        ty::Q4_1,
        ty::F16,
        ty::Q8_0,
        ty::Q4_1,
        ty::Q4_0,
        ty::Q8_0,
    ],
    [
        ty::Q8_0,
        ty::F32,
        ty::Q4_0,
        ty::Q4_1,
        ty::Q8_0,
        ty::Q4_1,
        ty::Q4_0,
    ],
];
pub const TOKEN_EMBD_TYPE: u32 = ty::Q8_0;
pub const OUTPUT_TYPE: u32 = ty::Q4_1;

/// The committed tiny model (`COMMITTED_PATH` under `root`, the lmz crate's directory),
/// hashed and loaded by the portable engine on one thread, for up to 1,024 tokens a block:
/// what the vectors, the sweep, the fuzzers and the codec's tests decode kind-3 archives
/// with.
pub fn load_committed(root: &std::path::Path) -> crate::Result<super::portable::PortableLm> {
    use super::portable::{PortableLm, PortableOptions};
    let path = root.join(COMMITTED_PATH);
    let (sha256, size) = super::fetch::hash_file(&path)?;
    let file = super::fetch::ModelFile {
        path,
        sha256,
        size,
        name: "lmz tiny llama (synthetic)".into(),
    };
    let opts = PortableOptions {
        threads: 1,
        table_threads: Some(1),
        kernels: None,
    };
    PortableLm::load(&file, 1024, opts)
}

/// The tiny model as GGUF bytes, a pure function of `seed`.
pub fn tiny_llama(seed: u64) -> Vec<u8> {
    let (tokens, types, merges) = vocabulary();
    let n_vocab = tokens.len();
    let mut w = GgufWriter::new();
    let u32v = Value::U32;
    w.kv("general.architecture", string("llama"))
        .kv("general.type", string("model"))
        .kv("general.name", string("lmz tiny llama (synthetic)"))
        .kv("llama.block_count", u32v(N_LAYER as u32))
        .kv("llama.context_length", u32v(N_CTX))
        .kv("llama.embedding_length", u32v(N_EMBD as u32))
        .kv("llama.feed_forward_length", u32v(N_FF as u32))
        .kv("llama.attention.head_count", u32v(N_HEAD as u32))
        .kv("llama.attention.head_count_kv", u32v(N_HEAD_KV as u32))
        .kv("llama.rope.freq_base", Value::F32(ROPE_BASE))
        .kv(
            "llama.attention.layer_norm_rms_epsilon",
            Value::F32(RMS_EPS),
        )
        .kv("llama.vocab_size", u32v(n_vocab as u32))
        .kv("llama.rope.dimension_count", u32v(HEAD_DIM as u32))
        .kv("tokenizer.ggml.add_space_prefix", Value::Bool(false))
        .kv("tokenizer.ggml.add_bos_token", Value::Bool(false))
        .kv("tokenizer.ggml.model", string("gpt2"))
        .kv("tokenizer.ggml.pre", string("smollm"))
        .kv("tokenizer.ggml.tokens", strings(&tokens))
        .kv("tokenizer.ggml.token_type", Value::Array(Array::I32(types)))
        .kv("tokenizer.ggml.merges", strings(&merges))
        .kv("tokenizer.ggml.bos_token_id", u32v(BOS))
        .kv("tokenizer.ggml.eos_token_id", u32v(EOS))
        .kv("tokenizer.ggml.unknown_token_id", u32v(0))
        .kv("tokenizer.ggml.padding_token_id", u32v(EOS))
        .kv("general.quantization_version", u32v(2));

    let mut rng = SplitMix(seed);
    // A matrix of `rows` outputs × `cols` inputs (GGUF dims [cols, rows]), entries of
    // standard deviation `gain / sqrt(cols)`: activations keep their scale through it.
    let mut matrix = |w: &mut GgufWriter, name: &str, t: u32, rows: usize, cols: usize, gain| {
        let x = rng.normals(rows * cols, gain / (cols as f64).sqrt());
        w.tensor(name, &[cols as u64, rows as u64], t, encode(t, &x));
    };
    let kv_dim = N_HEAD_KV * HEAD_DIM;
    matrix(
        &mut w,
        "token_embd.weight",
        TOKEN_EMBD_TYPE,
        n_vocab,
        N_EMBD,
        8.0,
    );
    let mut norms = Vec::new();
    for (l, t) in LAYER_TYPES.iter().enumerate() {
        let name = |s: &str| format!("blk.{l}.{s}.weight");
        norms.push(name("attn_norm"));
        matrix(&mut w, &name("attn_q"), t[0], N_EMBD, N_EMBD, 1.0);
        matrix(&mut w, &name("attn_k"), t[1], kv_dim, N_EMBD, 1.0);
        matrix(&mut w, &name("attn_v"), t[2], kv_dim, N_EMBD, 1.0);
        matrix(&mut w, &name("attn_output"), t[3], N_EMBD, N_EMBD, 1.0);
        norms.push(name("ffn_norm"));
        matrix(&mut w, &name("ffn_gate"), t[4], N_FF, N_EMBD, 1.0);
        matrix(&mut w, &name("ffn_up"), t[5], N_FF, N_EMBD, 1.0);
        matrix(&mut w, &name("ffn_down"), t[6], N_EMBD, N_FF, 1.0);
    }
    norms.push("output_norm.weight".into());
    // Logits of standard deviation 1.5: distributions far from uniform, yet not so sharp
    // that random weights code English in more bytes than it has (a model block may not be
    // longer than its plain bytes, so the portable vector could not be written).
    matrix(&mut w, "output.weight", OUTPUT_TYPE, n_vocab, N_EMBD, 1.5);
    // Norm weights near 1, F32.
    for n in norms {
        let x: Vec<f32> = (0..N_EMBD)
            .map(|_| (1.0 + 0.1 * rng.normal()) as f32)
            .collect();
        w.tensor(&n, &[N_EMBD as u64], ty::F32, encode(ty::F32, &x));
    }
    w.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::bpe::Bpe;
    use crate::model::gguf::Gguf;

    fn committed() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(COMMITTED_PATH)
    }

    /// `LMZ_REGENERATE=1` rewrites the committed file (then commit it).
    #[test]
    fn regenerates_the_committed_file() {
        let b = tiny_llama(SEED);
        if std::env::var_os("LMZ_REGENERATE").is_some() {
            std::fs::create_dir_all(committed().parent().unwrap()).unwrap();
            std::fs::write(committed(), &b).unwrap();
        }
        assert!(b.len() < 100_000, "{} bytes", b.len());
        let c = std::fs::read(committed()).expect("the committed tiny model");
        assert!(c == b, "tiny_llama(SEED) differs from {COMMITTED_PATH}");
        assert_eq!(tiny_llama(SEED), b);
        assert_ne!(tiny_llama(SEED + 1), b);
    }

    #[test]
    fn is_a_complete_llama_file() {
        let g = Gguf::from_vec(tiny_llama(SEED)).unwrap();
        let u = |k| g.require(k, Gguf::get_u32).unwrap();
        assert_eq!(u("llama.block_count"), N_LAYER as u32);
        assert_eq!(u("llama.attention.head_count_kv"), N_HEAD_KV as u32);
        let n_vocab = u("llama.vocab_size") as u64;
        assert_eq!(n_vocab as usize, 3 + 256 + N_MERGES + 1);
        assert_ne!(n_vocab % 16, 0);
        let mut seen = std::collections::BTreeSet::new();
        for t in &g.tensors {
            assert!(t.bytes.is_some());
            seen.insert(t.ggml_type);
        }
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), [0, 1, 2, 3, 8]);
        assert_eq!(g.tensors.len(), 2 + 9 * N_LAYER + 1);
        assert_eq!(
            g.tensor("output.weight").unwrap().dims,
            [N_EMBD as u64, n_vocab]
        );
        assert_eq!(
            g.tensor("blk.1.ffn_down.weight").unwrap().dims,
            [N_FF as u64, 64]
        );
        assert_eq!(g.tensor("blk.0.attn_k.weight").unwrap().dims, [64, 32]);

        let b = Bpe::from_gguf(&g).unwrap();
        assert_eq!(b.len() as u64, n_vocab);
        let text = "Alice was beginning to get very tired <tiny> of 2024 things.\n";
        let toks = b.tokenize(text.as_bytes()).unwrap();
        let back: Vec<u8> = toks.iter().flat_map(|&t| b.piece(t).to_vec()).collect();
        assert_eq!(back, text.as_bytes());
        assert!(toks.len() < text.len() * 2 / 3, "{} tokens", toks.len());
        assert!(
            toks.contains(&(n_vocab as u32 - 1)),
            "the user-defined token"
        );
        assert_eq!(b.piece(BOS), b"");
    }

    #[test]
    fn merges_are_learned_english() {
        let m = learn_merges(TRAINING_TEXT, N_MERGES);
        assert_eq!(m.len(), N_MERGES);
        let joined: Vec<String> = m.iter().map(|(a, b)| format!("{a}{b}")).collect();
        assert!(joined.iter().any(|t| t == "Ġthe"), "{joined:?}");
    }
}
