//! Choosing and loading the probability model for a command.

use lmz::format::{Header, ModelKind};
use lmz::model::order1::Order1;
use lmz::model::Model;

use crate::ModelArgs;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Engine {
    /// The portable engine for every model it runs (Llama-architecture GGUF with Q4_0, Q4_1,
    /// Q8_0, F16 and F32 weights: the default SmolLM2), else llama.cpp (other architectures,
    /// K-quants), so that an archive decodes on every machine wherever that is possible.
    Auto,
    /// The language model through lmz's own specified arithmetic: archives decode on every
    /// machine (model kind 3). Llama-architecture GGUF models with Q4_0/Q4_1/Q8_0/F16/F32
    /// weights.
    Portable,
    /// The language model through llama.cpp: fastest on GPUs and for other architectures,
    /// but its archives decode only on machines of the writer's class (model kind 2).
    Llama,
    /// The built-in adaptive order-1 byte model.
    Order1,
    /// No model: zstd or stored blocks only.
    None,
}

impl Engine {
    /// `--engine`'s default for pack.
    pub const DEFAULT: Engine = Engine::Auto;

    /// What `lmz bench` measures when not told: every language-model engine of this build.
    pub fn bench_default() -> Vec<Engine> {
        if cfg!(feature = "llama") {
            vec![Engine::Portable, Engine::Llama]
        } else {
            vec![Engine::Portable]
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Engine::Auto => "auto",
            Engine::Portable => "portable",
            Engine::Llama => "llama",
            Engine::Order1 => "order1",
            Engine::None => "none",
        }
    }
}

/// Most tokens a model block of `block_size` bytes may hold: one per byte, the format's
/// bound. (Evaluation contexts are sized to the blocks actually coded, not to this.)
pub fn max_block_tokens(block_size: u32) -> u32 {
    block_size
}

/// The model for packing.
pub fn load_for_pack(
    engine: Engine,
    block_size: u32,
    m: &ModelArgs,
) -> lmz::Result<Option<Box<dyn Model>>> {
    Ok(match engine {
        Engine::None => None,
        Engine::Order1 => Some(Box::new(Order1::new(block_size))),
        Engine::Llama => Some(load_llama(
            m,
            lmz::model::fetch::Want::Default,
            max_block_tokens(block_size),
        )?),
        Engine::Portable => Some(load_portable(
            m,
            lmz::model::fetch::Want::Default,
            max_block_tokens(block_size),
        )?),
        Engine::Auto => Some(load_auto(m, max_block_tokens(block_size))?),
    })
}

/// `--engine auto`: the portable engine if it runs this model, else llama.cpp. Only a model
/// the portable engine cannot run (its architecture or weight types) falls back; any other
/// failure (a missing or damaged file, a bad `LMZ_KERNELS`) is reported as it is.
fn load_auto(m: &ModelArgs, max_tokens: u32) -> lmz::Result<Box<dyn Model>> {
    use lmz::model::portable::PortableLm;
    let file = lmz::model::fetch::resolve(m.model.as_deref(), lmz::model::fetch::Want::Default)?;
    log::debug!("model: {}", file.describe());
    match PortableLm::load_if_supported(&file, max_tokens, portable_options(m))? {
        Ok(model) => Ok(Box::new(model)),
        Err(why) if cfg!(feature = "llama") => {
            log::info!(
                "{}: {why}; packing with the llama engine (model kind 2: the archive decodes \
                 only on machines of this one's class)",
                file.path.display()
            );
            open_llama(&file, m, max_tokens)
        }
        Err(why) => Err(lmz::Error::ModelUnavailable {
            detail: format!(
                "{}: {why}, and this lmz was built without the llama engine",
                file.path.display()
            ),
        }),
    }
}

/// The model an archive needs, verified against its pin before anything is decoded.
pub fn load_for_archive(h: &Header, m: &ModelArgs) -> lmz::Result<Option<Box<dyn Model>>> {
    let model: Box<dyn Model> = match h.pin.kind {
        ModelKind::None => return Ok(None),
        ModelKind::Order1 => Box::new(Order1::new(h.pin.max_block_tokens)),
        ModelKind::Llama => load_llama(
            m,
            lmz::model::fetch::Want::Pinned {
                pin: &h.pin,
                name: &h.model_name,
            },
            h.pin.max_block_tokens,
        )?,
        ModelKind::Portable => {
            let v = h.pin.flash_attn;
            if v != lmz::model::portable::ARITH_VERSION {
                return Err(lmz::Error::ModelMismatch {
                    expected: format!("lmz transformer arithmetic version {v}"),
                    found: format!(
                        "this lmz implements version {} only: decode with an lmz that \
                         implements version {v}",
                        lmz::model::portable::ARITH_VERSION
                    ),
                });
            }
            load_portable(
                m,
                lmz::model::fetch::Want::Pinned {
                    pin: &h.pin,
                    name: &h.model_name,
                },
                h.pin.max_block_tokens,
            )?
        }
    };
    if !model.pin().matches(&h.pin) {
        return Err(lmz::Error::ModelMismatch {
            expected: format!("{} with settings {:?}", h.model_name, h.pin),
            found: format!("the model loaded has settings {:?}", model.pin()),
        });
    }
    // The backend is a diagnostic, not part of the pin (FORMAT.md §4.2): another one may
    // compute other logits, which the block CRCs then catch. Say so before that happens
    // (kind 3 computes the same logits everywhere, by specification).
    let ours = model.backend();
    if h.pin.kind == ModelKind::Llama && !h.backend.is_empty() && h.backend != ours {
        log::warn!(
            "the archive was written on {} and this lmz evaluates on {ours}: llama.cpp's results \
             can differ between backends and devices, so model-coded blocks may fail their checks",
            h.backend
        );
    }
    Ok(Some(model))
}

fn load_portable(
    m: &ModelArgs,
    want: lmz::model::fetch::Want<'_>,
    max_tokens: u32,
) -> lmz::Result<Box<dyn Model>> {
    let file = lmz::model::fetch::resolve(m.model.as_deref(), want)?;
    open_portable(&file, m, max_tokens)
}

fn open_portable(
    file: &lmz::model::fetch::ModelFile,
    m: &ModelArgs,
    max_tokens: u32,
) -> lmz::Result<Box<dyn Model>> {
    log::debug!("model: {}", file.describe());
    let opts = portable_options(m);
    Ok(Box::new(lmz::model::portable::PortableLm::load(
        file, max_tokens, opts,
    )?))
}

fn portable_options(m: &ModelArgs) -> lmz::model::portable::PortableOptions {
    lmz::model::portable::PortableOptions {
        threads: m.threads.unwrap_or(0),
        table_threads: m.table_threads,
        kernels: None,
    }
}

#[cfg(feature = "llama")]
fn load_llama(
    m: &ModelArgs,
    want: lmz::model::fetch::Want<'_>,
    max_tokens: u32,
) -> lmz::Result<Box<dyn Model>> {
    let file = lmz::model::fetch::resolve(m.model.as_deref(), want)?;
    open_llama(&file, m, max_tokens)
}

#[cfg(feature = "llama")]
fn open_llama(
    file: &lmz::model::fetch::ModelFile,
    m: &ModelArgs,
    max_tokens: u32,
) -> lmz::Result<Box<dyn Model>> {
    log::debug!("model: {}", file.describe());
    let threads = m.threads.unwrap_or_else(lmz::model::llama::available_cores);
    let opts = lmz::model::llama::LlamaOptions {
        threads,
        table_threads: m.table_threads,
    };
    Ok(Box::new(lmz::model::llama::LlamaLm::load(
        file, max_tokens, opts,
    )?))
}

#[cfg(not(feature = "llama"))]
fn load_llama(
    _: &ModelArgs,
    _: lmz::model::fetch::Want<'_>,
    _: u32,
) -> lmz::Result<Box<dyn Model>> {
    Err(no_llama())
}

#[cfg(not(feature = "llama"))]
fn open_llama(
    _: &lmz::model::fetch::ModelFile,
    _: &ModelArgs,
    _: u32,
) -> lmz::Result<Box<dyn Model>> {
    Err(no_llama())
}

#[cfg(not(feature = "llama"))]
fn no_llama() -> lmz::Error {
    lmz::Error::ModelUnavailable {
        detail: "this lmz was built without the llama engine (cargo feature `llama`)".into(),
    }
}
