//! Bills of materials checked against independent oracles:
//!
//! - the fixture Prometheus image (Debian's binary, with a real dpkg database for exactly the
//!   packages it ships) imported into the real incusd: the SBOM recorded with the image lists
//!   the packages and versions `dpkg-query -W` reports inside the running container, and for
//!   /bin/prometheus what Debian's `go version -m` reports for the same binary;
//! - a Go module program with a dependency and a replacement, built here by `go build`: the
//!   build info read out of the ELF matches `go version -m` line for line.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};

use atlas_image::sbom::gobuild::{ElfScan, GoBuildInfo};

use crate::common::{atlas, cyclonedx, have_tool, require_all, run, stderr, stdout};
use atlas_test_support::incus::{ProjectGuard, incus_ok};

const REGISTRY: crate::common::FixtureRegistry = crate::common::FixtureRegistry;

/// `go version -m FILE`: the toolchain, then (kind, fields) of every indented line.
fn go_version_m(file: &Path) -> (String, Vec<(String, Vec<String>)>) {
    let o = Command::new("go")
        .args(["version", "-m"])
        .arg(file)
        .output()
        .unwrap();
    assert!(o.status.success(), "go version -m: {}", stderr(&o));
    let text = stdout(&o);
    let mut lines = text.lines();
    let toolchain = lines
        .next()
        .and_then(|l| l.rsplit_once(": "))
        .map(|(_, v)| v.to_owned())
        .unwrap();
    let rest = lines
        .map(|l| {
            let mut f = l.trim_start_matches('\t').split('\t').map(str::to_owned);
            let kind = f.next().unwrap_or_default();
            (kind, f.filter(|x| !x.is_empty()).collect::<Vec<_>>())
        })
        // go prints an empty line after a replacement.
        .filter(|(kind, _)| !kind.is_empty())
        .collect();
    (toolchain, rest)
}

/// The same lines, from what we read (`build` values as go prints them: quoted when needed).
fn lines_of(info: &GoBuildInfo) -> Vec<(String, Vec<String>)> {
    let module = |kind: &str, m: &atlas_image::sbom::GoModule| {
        let mut out = vec![(
            kind.to_owned(),
            [m.path.clone(), m.version.clone(), m.sum.clone()]
                .into_iter()
                .filter(|x| !x.is_empty())
                .collect(),
        )];
        if let Some(r) = &m.replace {
            out.push((
                "=>".to_owned(),
                [r.path.clone(), r.version.clone(), r.sum.clone()]
                    .into_iter()
                    .filter(|x| !x.is_empty())
                    .collect(),
            ));
        }
        out
    };
    let mut out = vec![("path".to_owned(), vec![info.path.clone()])];
    if let Some(m) = &info.main {
        out.extend(module("mod", m));
    }
    for d in &info.deps {
        out.extend(module("dep", d));
    }
    for (k, v) in &info.settings {
        let quoted = v.contains([' ', '"', '\t']) || v.is_empty() && k.starts_with('-');
        let v = if quoted {
            serde_json::to_string(v).unwrap()
        } else {
            v.clone()
        };
        out.push(("build".to_owned(), vec![format!("{k}={v}")]));
    }
    out
}

fn scan(file: &Path) -> GoBuildInfo {
    let bytes = std::fs::read(file).unwrap();
    let mut s = ElfScan::default();
    for c in bytes.chunks(256 * 1024) {
        s.feed(c);
    }
    s.finish().expect("Go build info")
}

/// A module program with a dependency replaced by a local directory, built offline.
#[test]
fn go_module_build_info_matches_go_version_m() {
    if !have_tool("go") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let w = |p: &str, s: &str| {
        let path = t.join(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, s).unwrap();
    };
    w("lib/go.mod", "module example.com/lib\n\ngo 1.19\n");
    w(
        "lib/lib.go",
        "package lib\n\nfunc Hello() string { return \"hello\" }\n",
    );
    w(
        "app/go.mod",
        "module example.com/app\n\ngo 1.19\n\nrequire example.com/lib v1.2.3\n\nreplace example.com/lib => ../lib\n",
    );
    w(
        "app/main.go",
        "package main\n\nimport \"example.com/lib\"\n\nfunc main() { println(lib.Hello()) }\n",
    );
    let out = t.join("app-bin");
    let o = Command::new("go")
        .args(["build", "-ldflags=-s -w", "-o"])
        .arg(&out)
        .arg(".")
        .current_dir(t.join("app"))
        .env("GOPROXY", "off")
        .env("GOFLAGS", "-mod=mod")
        .env("GOCACHE", t.join("gocache"))
        .env("GOPATH", t.join("gopath"))
        .output()
        .unwrap();
    assert!(o.status.success(), "go build: {}", stderr(&o));
    let (toolchain, lines) = go_version_m(&out);
    let info = scan(&out);
    assert_eq!(info.toolchain, toolchain);
    assert!(
        lines.iter().any(|(k, _)| k == "dep") && lines.iter().any(|(k, _)| k == "=>"),
        "the oracle lists the dependency and its replacement: {lines:?}"
    );
    assert_eq!(lines_of(&info), lines);
}

fn ready() -> bool {
    let tools = ["incus", "go", "curl"].iter().all(|t| have_tool(t));
    let up = Command::new("curl")
        .args(["-sf", &format!("http://{REGISTRY}/v2/")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if tools && !up {
        assert!(
            !require_all(),
            "the fixture registry {REGISTRY} is required (ATLAS_TEST_REQUIRE_ALL=1)"
        );
        eprintln!("skipping: no registry at {REGISTRY}");
    }
    tools && up
}

/// (name, version, arch) of the deb components of a CycloneDX document.
fn deb_packages(doc: &serde_json::Value) -> BTreeSet<(String, String, String)> {
    doc["components"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| {
            c["purl"]
                .as_str()
                .is_some_and(|p| p.starts_with("pkg:deb/"))
        })
        .map(|c| {
            let purl = c["purl"].as_str().unwrap();
            let arch = purl
                .split_once("arch=")
                .map(|(_, a)| a.split('&').next().unwrap_or("").to_owned())
                .unwrap_or_default();
            (
                c["name"].as_str().unwrap().to_owned(),
                c["version"].as_str().unwrap().to_owned(),
                arch,
            )
        })
        .collect()
}

fn property<'a>(c: &'a serde_json::Value, name: &str) -> Option<&'a str> {
    c["properties"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == name)?["value"]
        .as_str()
}

#[test]
fn fixture_image_sbom_matches_dpkg_query_and_go_version_m() {
    if !ready() {
        return;
    }
    let project = format!("t-sbom-{}", std::process::id());
    let tmp = tempfile::tempdir().unwrap();
    incus_ok(&["project", "create", &project]);
    // Removes the test's instance, images and project, also on panic.
    let _guard = ProjectGuard::new(&project);
    let src = format!(
        "docker://{REGISTRY}/{}",
        crate::common::fixture_of("prometheus")
    );
    let o = run(atlas()
        .args([
            "--progress",
            "none",
            "--project",
            &project,
            "image",
            "import",
            &src,
        ])
        .args(["--alias", "prom", "--cache-dir"])
        .arg(tmp.path().join("cache")));
    assert!(o.status.success(), "image import: {}", stderr(&o));
    let o = run(atlas().args([
        "--json",
        "--project",
        &project,
        "image",
        "inspect",
        "prom",
        "--sbom",
    ]));
    assert!(o.status.success(), "image inspect --sbom: {}", stderr(&o));
    let doc: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(doc["bomFormat"], "CycloneDX");
    // The document as recorded with the image, checked by an independent tool against the
    // official schema of the specVersion it declares.
    if cyclonedx::validator_ready() {
        cyclonedx::assert_valid(tmp.path(), "prom.cdx.json", &o.stdout);
    }
    let listed = deb_packages(&doc);
    if listed.is_empty() {
        assert!(
            !require_all(),
            "the fixture prometheus image has no dpkg database: rebuild it with tests/fixtures/build-images.sh"
        );
        eprintln!("skipping: fixture image without a dpkg database (old fixtures)");
        return;
    }

    // The oracle: dpkg-query inside the running container.
    incus_ok(&[
        "init",
        "prom",
        "sbom",
        "--project",
        &project,
        "--storage",
        "default",
    ]);
    incus_ok(&["start", "--project", &project, "sbom"]);
    let out = incus_ok(&[
        "exec",
        "--project",
        &project,
        "sbom",
        "--",
        "/usr/bin/dpkg-query",
        "-W",
        "-f",
        "${Package}\\t${Version}\\t${Architecture}\\n",
    ]);
    let reported: BTreeSet<(String, String, String)> = out
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f[0].to_owned(), f[1].to_owned(), f[2].to_owned())
        })
        .collect();
    assert_eq!(
        listed, reported,
        "SBOM packages vs dpkg-query -W in the container"
    );

    // The Go build info of /bin/prometheus: the same Debian binary as /usr/bin/prometheus here.
    let (toolchain, lines) = go_version_m(Path::new("/usr/bin/prometheus"));
    let components = doc["components"].as_array().unwrap();
    let bin = components
        .iter()
        .find(|c| property(c, "atlas:path") == Some("/bin/prometheus"))
        .unwrap_or_else(|| panic!("no component for /bin/prometheus: {doc}"));
    assert_eq!(property(bin, "go:toolchain"), Some(toolchain.as_str()));
    let mut from_sbom = Vec::new();
    for (kind, fields) in &lines {
        match kind.as_str() {
            "path" => from_sbom
                .push(property(bin, "go:path").map(str::to_owned) == Some(fields[0].clone())),
            "build" => {
                let (k, v) = fields[0].split_once('=').unwrap();
                from_sbom
                    .push(property(bin, &format!("go:build:{k}")) == Some(v.trim_matches('"')));
            }
            "dep" => from_sbom.push(
                components
                    .iter()
                    .any(|c| c["name"] == fields[0].as_str() && c["version"] == fields[1].as_str()),
            ),
            _ => {}
        }
    }
    assert!(
        from_sbom.iter().all(|ok| *ok),
        "go version -m {lines:?} vs the SBOM component {bin}"
    );
    let go_deps = lines.iter().filter(|(k, _)| k == "dep").count();
    let listed_deps = doc["dependencies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["ref"] == "file:/bin/prometheus")
        .and_then(|d| d["dependsOn"].as_array())
        .map(|a| a.len())
        .unwrap_or(0);
    // stdlib + one entry per module `go version -m` lists.
    assert_eq!(listed_deps, go_deps + 1, "{doc}");
    // Our own layer: atlas-init with its hash.
    assert!(
        components
            .iter()
            .any(|c| c["name"] == "atlas-init" && c["hashes"][0]["alg"] == "SHA-256"),
        "{doc}"
    );
}

fn sha256_of(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// A document from our writer with every kind of component it writes: deb and apk packages
/// (source, license; one in two databases), an operating system, a Go binary with a replaced
/// module and build settings, a pre-1.18 Go binary, atlas-init, a rendered file and a Go
/// binary of our own layer, a base image.
fn every_kind_of_component() -> Vec<u8> {
    use atlas_image::sbom::{GoModule, Inventory, OsPackage, Own, OwnFile, Subject, cyclonedx};
    let module = |path: &str, version: &str| GoModule {
        path: path.to_owned(),
        version: version.to_owned(),
        sum: format!("h1:{}=", sha256_of(path.as_bytes())),
        replace: None,
    };
    let package = |kind: &str, name: &str, version: &str, license: Option<&str>| OsPackage {
        kind: kind.to_owned(),
        name: name.to_owned(),
        version: version.to_owned(),
        arch: "amd64".to_owned(),
        source: Some(format!("{name}-src")),
        license: license.map(str::to_owned),
        database: "/var/lib/dpkg/status".to_owned(),
    };
    let mut replaced = module("example.com/lib", "v1.2.3");
    replaced.replace = Some(Box::new(module("example.com/fork", "v1.2.4")));
    let go = GoBuildInfo {
        toolchain: "go1.22.2".to_owned(),
        path: "example.com/app/cmd/app".to_owned(),
        main: Some(module("example.com/app", "v0.1.0")),
        deps: vec![replaced, module("golang.org/x/sys", "v0.20.0")],
        settings: vec![("-ldflags".to_owned(), "-s -w".to_owned())],
        legacy: false,
    };
    let legacy = GoBuildInfo {
        toolchain: "go1.17".to_owned(),
        legacy: true,
        ..GoBuildInfo::default()
    };
    let inv = Inventory {
        os: (Some("debian".to_owned()), Some("12".to_owned())),
        // libc6 twice: in dpkg's status and in a distroless status.d file.
        packages: vec![
            package("deb", "libc6", "2.36-9+deb12u7", None),
            OsPackage {
                database: "/var/lib/dpkg/status.d/libc6".to_owned(),
                ..package("deb", "libc6", "2.36-9+deb12u7", None)
            },
            package("apk", "musl", "1.2.5-r0", Some("MIT")),
        ],
        // /usr/bin/caddy: a Go binary our own layer brings (caddy's recipe downloads it).
        go: vec![
            ("/bin/app".to_owned(), go.clone()),
            ("/bin/old".to_owned(), legacy),
            ("/usr/bin/caddy".to_owned(), go),
        ],
    };
    let own = [
        ("/sbin/atlas-init", "atlas-init"),
        ("/etc/atlas/service.json", "rendered"),
        ("/usr/bin/caddy", "recipe content"),
    ]
    .map(|(path, origin)| OwnFile {
        path: path.to_owned(),
        sha256: sha256_of(path.as_bytes()),
        size: path.len() as u64,
        origin,
    });
    let subject = Subject {
        name: "prometheus".to_owned(),
        version: Some("v3.5.0".to_owned()),
        digest: format!("sha256:{}", sha256_of(b"manifest")),
        base: Some((
            "quay.io/prometheus/prometheus:v3.5.0".to_owned(),
            format!("sha256:{}", sha256_of(b"base manifest")),
        )),
    };
    cyclonedx(&subject, &inv, Own::Files(&own))
}

/// The independent validator accepts what our writer makes, and refuses a component without
/// a `type` (the schema), a dependency on a `bom-ref` the document does not have (the
/// library's model) and a `bom-ref` used twice (the specification's rule), saying which.
#[test]
fn cyclonedx_validator_accepts_our_documents_and_refuses_broken_ones() {
    if !cyclonedx::validator_ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let good = every_kind_of_component();
    cyclonedx::assert_valid(tmp.path(), "good.cdx.json", &good);
    let doc: serde_json::Value = serde_json::from_slice(&good).unwrap();

    let mut untyped = doc.clone();
    let c = untyped["components"][1].as_object_mut().unwrap();
    assert!(c.remove("type").is_some());
    let mut dangling = doc.clone();
    dangling["dependencies"][0]["dependsOn"]
        .as_array_mut()
        .unwrap()
        .push("pkg:deb/debian/nowhere@1".into());
    let mut twice = doc.clone();
    twice["components"][2]["bom-ref"] = doc["components"][1]["bom-ref"].clone();
    for (name, broken, says) in [
        (
            "untyped",
            untyped,
            "at components/1: 'type' is a required property",
        ),
        ("dangling", dangling, "UnknownComponentDependencyException"),
        ("twice", twice, "is not unique within the BOM"),
    ] {
        let file = tmp.path().join(format!("{name}.cdx.json"));
        std::fs::write(&file, serde_json::to_vec(&broken).unwrap()).unwrap();
        let o = cyclonedx::validate(&file);
        assert_eq!(
            o.status.code(),
            Some(1),
            "{name}: {}{}",
            stdout(&o),
            stderr(&o)
        );
        assert!(stdout(&o).contains(says), "{name}: {}", stdout(&o));
    }
}
