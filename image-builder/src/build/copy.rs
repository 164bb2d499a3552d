//! A recipe's `[[copy]]`: one path (file, directory or link) out of another image, laid into
//! the Atlas layer at `to`, with the mode, owner and extended attributes it had there. The
//! source image is flattened by the same merge as a conversion, so the same rules hold (no
//! absolute or `..` paths, hard links regrouped inside the copied tree, symlinks kept as
//! stored; symlinks on the way to `from` are followed inside the source image).

use std::sync::Arc;

use super::{BuildError, LayerEntry};
use crate::layer::deterministic::Item;
use crate::layer::extract_subtree;
use crate::recipe::Recipe;
use crate::source::PulledImage;

/// The Atlas-layer entries of `recipe.copies[index]`, taken from `source` (its pulled image).
pub fn copied_entries(
    recipe: &Recipe,
    index: usize,
    source: &PulledImage,
) -> Result<Vec<LayerEntry>, BuildError> {
    let Some(c) = recipe.copies.get(index) else {
        return Err(BuildError::CopySourceMissing {
            recipe: recipe.name.clone(),
            index,
            image: String::new(),
        });
    };
    let fail = |error| BuildError::Copy {
        what: format!(
            "recipe {}: copy[{index}] of {} from {}",
            recipe.name, c.from, source.source
        ),
        error: Box::new(error),
    };
    let layers = super::unified::base_layers(&Arc::new(source.clone()));
    let (resolved, members) = extract_subtree(&layers, &c.from).map_err(fail)?;
    // `to` ending in '/' names the directory to copy into, as in a Dockerfile.
    let root = if c.to.ends_with('/') {
        let name = resolved.rsplit('/').next().unwrap_or(&resolved);
        format!("{}{name}", c.to)
    } else {
        c.to.clone()
    };
    let under = |rel: &[u8]| -> Result<String, BuildError> {
        let rel = std::str::from_utf8(rel).map_err(|_| {
            fail(crate::layer::LayerError::Select {
                path: String::from_utf8_lossy(rel).into_owned(),
                detail: "the path is not UTF-8".to_owned(),
            })
        })?;
        Ok(match rel {
            "" => root.clone(),
            r => format!("{}/{r}", root.trim_end_matches('/')),
        })
    };
    let mut out = Vec::with_capacity(members.len());
    for m in members {
        let mut spec = m.spec;
        if let Item::Hardlink(target) = &spec.item {
            spec.item = Item::Hardlink(under(target.as_bytes())?);
        }
        out.push(LayerEntry {
            path: under(&m.path)?,
            spec,
        });
    }
    Ok(out)
}
