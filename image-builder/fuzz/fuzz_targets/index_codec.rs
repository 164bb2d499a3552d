//! A cached index is input too: arbitrary bytes given to `LayerIndex::from_bytes` must decode
//! or fail cleanly, and whatever decodes must merge or fail cleanly (never panic), with a
//! plan whose writing against an empty blob fails or succeeds without panicking either.
#![no_main]

use atlas_image::layer::{FlattenOptions, Layer, LayerIndex, flatten_indexed};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(index) = LayerIndex::from_bytes("sha256:cached", data) else {
        return;
    };
    assert_eq!(
        LayerIndex::from_bytes("sha256:cached", &index.to_bytes()).ok(),
        Some(index.clone())
    );
    let layer = Layer::from_bytes("sha256:cached", None, Vec::new());
    let mut out = Vec::new();
    if let Err(e) = flatten_indexed(&[layer], &[index], &mut out, &FlattenOptions::default()) {
        assert!(e.to_string().contains("sha256:cached"), "{e}");
    }
});
