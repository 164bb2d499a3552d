//! Bills of materials of images, as CycloneDX 1.5 JSON.
//!
//! What an image holds is read while its layers are indexed, in the same decompressed pass
//! (no extra read of any layer; see [`scan`] and `layer::index`): the OS package databases
//! (dpkg `status`, distroless' `status.d/`, apk `installed`), `os-release`, and the Go build
//! info of every executable (what `go version -m` prints). [`Inventory::of_layers`] keeps
//! what survives the merge of the layers (a database replaced or deleted by a later layer is
//! not reported), and [`cyclonedx`] writes the document, adding our own layer's files
//! (atlas-init, the rendered service files, recipe files and downloads) with their sha256.
//!
//! The output is a function of its inputs (sorted, no timestamp, no random serial number):
//! the same image gives the same bytes.

pub mod gobuild;
pub mod packages;
pub mod scan;

use serde_json::{Value, json};

pub use gobuild::{GoBuildInfo, GoModule};
pub use packages::OsPackage;
pub use scan::{Found, LayerContents, Scanner};

use crate::layer::{LayerError, LayerIndex, Plan};

/// The media type of the documents written here.
pub const MEDIA_TYPE: &str = "application/vnd.cyclonedx+json";

/// A file of our own (Atlas) layer, with where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnFile {
    /// Absolute path in the image.
    pub path: String,
    /// Lowercase hex.
    pub sha256: String,
    pub size: u64,
    /// `atlas-init`, `rendered` (service description, network), `recipe file`, `recipe content`
    /// (copied from another image, downloaded, or a plugin).
    pub origin: &'static str,
}

/// The image a document describes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subject {
    /// Service name or image reference.
    pub name: String,
    /// Upstream tag it was built from.
    pub version: Option<String>,
    /// Manifest digest (`sha256:...`).
    pub digest: String,
    /// The base image's reference and manifest digest, for Atlas images.
    pub base: Option<(String, String)>,
}

/// What the merged layers hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inventory {
    /// os-release `ID` and `VERSION_ID`.
    pub os: (Option<String>, Option<String>),
    pub packages: Vec<OsPackage>,
    /// (absolute path, build info) of every Go executable.
    pub go: Vec<(String, GoBuildInfo)>,
}

impl Inventory {
    /// The files that win the merge of `indexes` (bottom to top) and what the scan found in
    /// them. Header-only work: no layer is read.
    pub fn of_layers(indexes: &[LayerIndex]) -> Result<Inventory, LayerError> {
        let plan = Plan::merge(indexes)?;
        let mut inv = Inventory::default();
        let mut os_release: Option<(bool, Vec<u8>)> = None;
        for (pos, files) in plan.files.iter().enumerate() {
            let found = &indexes[pos].contents.found;
            for (ord, out) in files {
                let Ok(i) = found.binary_search_by_key(ord, |(o, _)| *o) else {
                    continue;
                };
                let path = format!("/{}", String::from_utf8_lossy(out));
                match &found[i].1 {
                    Found::DpkgStatus(b) | Found::DpkgStatusD(b) => inv
                        .packages
                        .extend(packages::dpkg(&String::from_utf8_lossy(b), &path)),
                    Found::ApkInstalled(b) => inv
                        .packages
                        .extend(packages::apk(&String::from_utf8_lossy(b), &path)),
                    // /etc/os-release wins over /usr/lib/os-release, as systemd reads them.
                    Found::OsRelease(b) => {
                        let etc = path == "/etc/os-release";
                        if os_release
                            .as_ref()
                            .is_none_or(|(was_etc, _)| etc && !was_etc)
                        {
                            os_release = Some((etc, b.clone()));
                        }
                    }
                    Found::Go(info) => inv.go.push((path, info.clone())),
                }
            }
        }
        if let Some((_, b)) = os_release {
            inv.os = packages::os_release(&String::from_utf8_lossy(&b));
        }
        inv.packages
            .sort_by(|a, b| (&a.name, &a.arch, &a.version).cmp(&(&b.name, &b.arch, &b.version)));
        inv.packages.dedup();
        inv.go.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(inv)
    }
}

/// Percent-encodes a purl segment (everything but unreserved characters).
fn pct(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn prop(name: &str, value: &str) -> Value {
    json!({"name": name, "value": value})
}

fn package_component(p: &OsPackage, os: &(Option<String>, Option<String>)) -> Value {
    let default_ns = if p.kind == "apk" { "alpine" } else { "debian" };
    let ns = os.0.clone().unwrap_or_else(|| default_ns.to_owned());
    let mut q = Vec::new();
    if !p.arch.is_empty() {
        q.push(format!("arch={}", pct(&p.arch)));
    }
    if let (Some(id), Some(v)) = os {
        q.push(format!("distro={}", pct(&format!("{id}-{v}"))));
    }
    let purl = format!(
        "pkg:{}/{}/{}@{}{}",
        p.kind,
        pct(&ns),
        pct(&p.name),
        pct(&p.version),
        if q.is_empty() {
            String::new()
        } else {
            format!("?{}", q.join("&"))
        }
    );
    let mut props = vec![prop("atlas:package-database", &p.database)];
    if let Some(s) = &p.source {
        props.push(prop("atlas:source-package", s));
    }
    let mut c = json!({
        "type": "library", "bom-ref": purl, "name": p.name, "version": p.version,
        "purl": purl, "properties": props,
    });
    if let Some(l) = &p.license {
        c["licenses"] = json!([{"expression": l}]);
    }
    c
}

fn go_purl(path: &str, version: &str) -> String {
    let path = path.split('/').map(pct).collect::<Vec<_>>().join("/");
    format!("pkg:golang/{path}@{}", pct(version))
}

fn go_module_component(m: &GoModule) -> Value {
    let mut props = Vec::new();
    if !m.sum.is_empty() {
        props.push(prop("go:sum", &m.sum));
    }
    if let Some(r) = &m.replace {
        props.push(prop("go:replace:path", &r.path));
        props.push(prop("go:replace:version", &r.version));
        if !r.sum.is_empty() {
            props.push(prop("go:replace:sum", &r.sum));
        }
    }
    let purl = go_purl(&m.path, &m.version);
    json!({"type": "library", "bom-ref": purl, "name": m.path, "version": m.version,
           "purl": purl, "properties": props})
}

/// The Go executable at `path`, its toolchain (stdlib) and its modules; adds the module
/// components not listed yet to `components` and returns the binary's dependency entry.
fn go_components(path: &str, info: &GoBuildInfo, components: &mut Vec<Value>) -> Value {
    let bin_ref = format!("file:{path}");
    let mut props = vec![prop("atlas:path", path)];
    if info.legacy {
        props.push(prop("go:buildinfo", "pre-Go-1.18 layout, not read"));
    } else {
        props.push(prop("go:toolchain", &info.toolchain));
        props.push(prop("go:path", &info.path));
        for (k, v) in &info.settings {
            props.push(prop(&format!("go:build:{k}"), v));
        }
    }
    let main = info.main.as_ref();
    let mut bin = json!({
        "type": "application", "bom-ref": bin_ref,
        "name": main.map(|m| m.path.clone()).filter(|p| !p.is_empty()).unwrap_or_else(|| {
            if info.path.is_empty() { path.to_owned() } else { info.path.clone() }
        }),
        "properties": props,
    });
    if let Some(m) = main.filter(|m| m.version != "(devel)" && !m.version.is_empty()) {
        bin["version"] = json!(m.version);
        bin["purl"] = json!(go_purl(&m.path, &m.version));
    }
    components.push(bin);
    let mut depends = Vec::new();
    let mut add = |c: Value, components: &mut Vec<Value>| {
        let r = c["bom-ref"].as_str().unwrap_or_default().to_owned();
        if !components.iter().any(|x| x["bom-ref"] == r.as_str()) {
            components.push(c);
        }
        depends.push(r);
    };
    if let Some(v) = info.toolchain.strip_prefix("go").filter(|_| !info.legacy) {
        let purl = format!("pkg:golang/stdlib@{}", pct(v));
        add(
            json!({"type": "library", "bom-ref": purl, "name": "stdlib",
                   "version": info.toolchain, "purl": purl}),
            components,
        );
    }
    for d in &info.deps {
        add(go_module_component(d), components);
    }
    json!({"ref": bin_ref, "dependsOn": depends})
}

fn own_component(f: &OwnFile) -> Value {
    let is_init = f.origin == "atlas-init";
    let mut c = json!({
        "type": if is_init { "application" } else { "file" },
        "bom-ref": format!("file:{}", f.path),
        "name": if is_init { "atlas-init".to_owned() } else { f.path.clone() },
        "hashes": [{"alg": "SHA-256", "content": f.sha256}],
        "properties": [prop("atlas:path", &f.path), prop("atlas:origin", f.origin),
                       prop("atlas:layer", "atlas"), prop("atlas:size", &f.size.to_string())],
    });
    if is_init {
        c["version"] = json!(env!("CARGO_PKG_VERSION"));
    }
    c
}

/// Adds `c` to `components`; when one with its `bom-ref` is there already (a package listed
/// in two databases, a Go binary our own layer brings), adds `c`'s hashes and properties to
/// that one instead, as every bom-ref must be unique within the BOM (CycloneDX).
fn add_component(components: &mut Vec<Value>, c: Value) {
    let Some(old) = components.iter_mut().find(|x| x["bom-ref"] == c["bom-ref"]) else {
        components.push(c);
        return;
    };
    for key in ["hashes", "properties"] {
        for v in c[key].as_array().into_iter().flatten() {
            if !old[key].is_array() {
                old[key] = json!([]);
            }
            let list = old[key].as_array_mut().expect("made an array above");
            if !list.contains(v) {
                list.push(v.clone());
            }
        }
    }
}

/// Our own layer, as far as it is known.
#[derive(Clone, Copy, Debug)]
pub enum Own<'a> {
    /// Built here: every file with its sha256.
    Files(&'a [OwnFile]),
    /// An Atlas image built elsewhere, passed through: its files are in the inventory only as
    /// far as the scan reads them.
    PassedThrough,
    /// Not an Atlas image.
    None,
}

/// The CycloneDX 1.5 JSON document of `subject`.
pub fn cyclonedx(subject: &Subject, inv: &Inventory, own: Own<'_>) -> Vec<u8> {
    let mut components = Vec::new();
    let mut dependencies = Vec::new();
    if let (Some(id), version) = &inv.os {
        components.push(
            json!({"type": "operating-system", "bom-ref": format!("os:{id}"),
                               "name": id, "version": version.clone().unwrap_or_default()}),
        );
    }
    for p in &inv.packages {
        add_component(&mut components, package_component(p, &inv.os));
    }
    for (path, info) in &inv.go {
        dependencies.push(go_components(path, info, &mut components));
    }
    let mut props = Vec::new();
    match own {
        Own::Files(files) => {
            for f in files {
                add_component(&mut components, own_component(f));
            }
        }
        Own::PassedThrough => props.push(prop(
            "atlas:own-layer",
            "passed through from a finished Atlas image: its files are not listed one by one",
        )),
        Own::None => {}
    }
    if let Some((name, digest)) = &subject.base {
        props.push(prop("atlas:base", name));
        props.push(prop("atlas:base-digest", digest));
    }
    let hex = subject
        .digest
        .strip_prefix("sha256:")
        .unwrap_or(&subject.digest);
    let mut image = json!({
        "type": "container", "bom-ref": "image", "name": subject.name,
        "hashes": [{"alg": "SHA-256", "content": hex}],
        "purl": format!("pkg:oci/{}@{}", pct(&subject.name), pct(&subject.digest)),
        "properties": props,
    });
    if let Some(v) = &subject.version {
        image["version"] = json!(v);
    }
    let top: Vec<Value> = components
        .iter()
        .filter(|c| {
            !dependencies.iter().any(|d: &Value| {
                d["dependsOn"]
                    .as_array()
                    .is_some_and(|a| a.contains(&c["bom-ref"]))
            })
        })
        .map(|c| c["bom-ref"].clone())
        .collect();
    dependencies.insert(0, json!({"ref": "image", "dependsOn": top}));
    let doc = json!({
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "version": 1,
        "metadata": {
            "tools": {"components": [{"type": "application", "name": "atlas-install",
                                       "version": env!("CARGO_PKG_VERSION")}]},
            "component": image,
        },
        "components": components,
        "dependencies": dependencies,
    });
    let mut out = serde_json::to_vec_pretty(&doc).expect("a JSON value always serializes");
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A package in two databases and a Go binary our own layer brings are one component
    /// each, with what both sources say: every bom-ref is unique within the BOM.
    #[test]
    fn one_component_per_bom_ref() {
        let package = |database: &str| OsPackage {
            kind: "deb".to_owned(),
            name: "libc6".to_owned(),
            version: "2.36-9".to_owned(),
            arch: "amd64".to_owned(),
            source: None,
            license: None,
            database: database.to_owned(),
        };
        let go = GoBuildInfo {
            toolchain: "go1.22.2".to_owned(),
            path: "caddy".to_owned(),
            ..GoBuildInfo::default()
        };
        let inv = Inventory {
            os: (None, None),
            packages: vec![package("/var/lib/dpkg/status"), package("/status.d/libc6")],
            go: vec![("/usr/bin/caddy".to_owned(), go)],
        };
        let own = [OwnFile {
            path: "/usr/bin/caddy".to_owned(),
            sha256: "ab".repeat(32),
            size: 1,
            origin: "recipe content",
        }];
        let subject = Subject {
            name: "caddy".to_owned(),
            version: None,
            digest: format!("sha256:{}", "cd".repeat(32)),
            base: None,
        };
        let doc: Value =
            serde_json::from_slice(&cyclonedx(&subject, &inv, Own::Files(&own))).expect("JSON");
        let components = doc["components"].as_array().expect("components");
        let refs: Vec<&str> = components
            .iter()
            .map(|c| c["bom-ref"].as_str().expect("bom-ref"))
            .collect();
        let mut unique = refs.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), refs.len(), "{refs:?}");
        let props = |c: &Value, name: &str| -> Vec<String> {
            c["properties"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["name"] == name)
                .map(|p| p["value"].as_str().unwrap_or_default().to_owned())
                .collect()
        };
        let libc = &components[0];
        assert_eq!(
            props(libc, "atlas:package-database"),
            ["/var/lib/dpkg/status", "/status.d/libc6"]
        );
        let caddy = components
            .iter()
            .find(|c| c["bom-ref"] == "file:/usr/bin/caddy")
            .expect("caddy");
        assert_eq!(caddy["type"], "application");
        assert_eq!(props(caddy, "go:toolchain"), ["go1.22.2"]);
        assert_eq!(props(caddy, "atlas:origin"), ["recipe content"]);
        assert_eq!(props(caddy, "atlas:path"), ["/usr/bin/caddy"]);
        assert_eq!(caddy["hashes"][0]["content"], "ab".repeat(32).as_str());
    }
}
