//! Arbitrary bytes as one or two layers: flattening must never panic, and whatever it
//! writes must be a tar whose paths are relative, `..`-free, unique, with every parent and
//! every hard-link target emitted before it.
#![no_main]

use atlas_image::layer::{FlattenOptions, Layer, flatten};
use libfuzzer_sys::fuzz_target;

#[path = "check.rs"]
mod check;
use check::check;

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    // Bit 0: one or two layers; bits 1-6: split point in blocks; bit 7: `rootfs/` prefix.
    let layers: Vec<Layer> = if ctl & 1 == 0 || rest.len() < 2 {
        vec![Layer::from_bytes("sha256:fuzz0", None, rest.to_vec())]
    } else {
        let cut = (usize::from((ctl >> 1) & 0x3f) * 512).min(rest.len());
        vec![
            Layer::from_bytes("sha256:fuzz0", None, rest[..cut].to_vec()),
            Layer::from_bytes("sha256:fuzz1", None, rest[cut..].to_vec()),
        ]
    };
    let prefix = if ctl & 0x80 != 0 {
        Some("rootfs".to_string())
    } else {
        None
    };
    let opts = FlattenOptions {
        prefix,
        threads: 1,
        ..Default::default()
    };
    let mut out = Vec::new();
    match flatten(&layers, &mut out, &opts) {
        Ok(_) => {
            check(&out);
            let mut again = Vec::new();
            flatten(&layers, &mut again, &opts).expect("second run of the same input fails");
            assert_eq!(out, again, "flattening is not deterministic");
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.contains("sha256:fuzz"),
                "error does not name the layer: {msg}"
            );
        }
    }
});
