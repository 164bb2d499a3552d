//! Printing a bill of materials (CycloneDX JSON) for `image inspect --sbom` and
//! `bundle inspect --sbom`: the document itself with `--json`, else one line per component.

use std::io::Write as _;

use anyhow::{Context as _, Result};

pub fn print(bytes: &[u8], json: bool) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        out.write_all(bytes).context("writing to stdout")?;
        return Ok(());
    }
    let doc: serde_json::Value =
        serde_json::from_slice(bytes).context("the bill of materials is not JSON")?;
    let image = &doc["metadata"]["component"];
    let s = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_owned();
    writeln!(
        out,
        "bill of materials of {} {} (CycloneDX {})",
        s(&image["name"]),
        s(&image["version"]),
        s(&doc["specVersion"])
    )
    .context("writing to stdout")?;
    writeln!(out, "{:<18} {:<50} {:<28} WHERE", "TYPE", "NAME", "VERSION")
        .context("writing to stdout")?;
    for c in doc["components"].as_array().into_iter().flatten() {
        let props = c["properties"].as_array().cloned().unwrap_or_default();
        let prop = |n: &str| {
            props
                .iter()
                .find(|p| p["name"] == n)
                .and_then(|p| p["value"].as_str())
                .map(str::to_owned)
        };
        let place = prop("atlas:path")
            .or_else(|| prop("atlas:package-database"))
            .unwrap_or_default();
        writeln!(
            out,
            "{:<18} {:<50} {:<28} {place}",
            s(&c["type"]),
            s(&c["name"]),
            s(&c["version"])
        )
        .context("writing to stdout")?;
    }
    Ok(())
}
