//! Parsing arbitrary bytes as a GGUF file.
//! Asserts: no panic; every tensor of a known type has its data inside the input, aligned;
//! writing a parsed file back and parsing that is a fixed point (the writer's output parses,
//! and re-writing it gives the same bytes), so nothing the parser accepts is misread.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lmz::model::gguf::Gguf;
use lmz::model::gguf_write::GgufWriter;

fn rewrite(g: &Gguf) -> Vec<u8> {
    let mut w = GgufWriter::new();
    for (k, v) in &g.metadata {
        w.kv(k, v.clone());
    }
    for t in &g.tensors {
        w.tensor(&t.name, &t.dims, t.ggml_type, g.tensor_data(t).to_vec());
    }
    w.finish()
}

fuzz_target!(|data: &[u8]| {
    let Ok(g) = Gguf::from_slice(data) else {
        return;
    };
    assert!(g.alignment.is_power_of_two());
    assert!(g.data_offset % g.alignment == 0);
    for t in &g.tensors {
        assert!((t.offset - g.data_offset) % g.alignment == 0);
        assert!(t.offset <= data.len() as u64);
        if let Some(n) = t.bytes {
            assert!(t.offset + n <= data.len() as u64);
            let d = g.tensor_data(t);
            assert_eq!(d.len() as u64, n);
            assert_eq!(d, &data[t.offset as usize..(t.offset + n) as usize]);
        }
    }
    let once = rewrite(&g);
    let g2 = Gguf::from_slice(&once).expect("the writer's output parses");
    assert_eq!(g2.tensors.len(), g.tensors.len());
    for (a, b) in g.tensors.iter().zip(&g2.tensors) {
        assert_eq!(
            (&a.name, &a.dims, a.ggml_type, a.bytes),
            (&b.name, &b.dims, b.ggml_type, b.bytes)
        );
    }
    assert_eq!(rewrite(&g2), once, "re-writing is a fixed point");
});
