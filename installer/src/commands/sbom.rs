//! Printing a bill of materials (CycloneDX JSON) for `image inspect --sbom` and
//! `bundle inspect --sbom`: the document itself with `--json`, else one line per component.

use anyhow::{Context as _, Result};

use crate::printer::Printer;

pub fn print(printer: &Printer, bytes: &[u8]) -> Result<()> {
    if printer.json_mode() {
        return printer.bytes(bytes);
    }
    let doc: serde_json::Value =
        serde_json::from_slice(bytes).context("the bill of materials is not JSON")?;
    let image = &doc["metadata"]["component"];
    let s = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_owned();
    printer.line(format_args!(
        "bill of materials of {} {} (CycloneDX {})",
        s(&image["name"]),
        s(&image["version"]),
        s(&doc["specVersion"])
    ))?;
    printer.line(format_args!(
        "{:<18} {:<50} {:<28} WHERE",
        "TYPE", "NAME", "VERSION"
    ))?;
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
        printer.line(format_args!(
            "{:<18} {:<50} {:<28} {place}",
            s(&c["type"]),
            s(&c["name"]),
            s(&c["version"])
        ))?;
    }
    Ok(())
}
