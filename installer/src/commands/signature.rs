//! `atlas-install signature sign|verify`, and the signing key and trust flags the bundle,
//! install and upgrade commands share.

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use atlas_install::signing::{PublicKey, SIG_SUFFIX, SecretKey, Trust};
use serde_json::json;

use super::Context;
use crate::cli::{PasswordArgs, SignatureCommand, TrustArgs};
use crate::printer::Printer;

pub fn run(ctx: &Context, cmd: SignatureCommand) -> Result<ExitCode> {
    let printer = ctx.printer;
    match cmd {
        SignatureCommand::Sign {
            key,
            password,
            files,
        } => sign(&key, &password, &files, printer),
        SignatureCommand::Verify { trust: t, files } => verify(&trust(&t)?, &files, printer),
    }
}

/// The embedded release keys, the `--trust-key`s and `--allow-unsigned`.
pub(super) fn trust(args: &TrustArgs) -> Result<Trust> {
    let mut keys = Vec::new();
    for k in &args.trust_key {
        keys.extend(PublicKey::from_arg(k)?);
    }
    Ok(Trust::embedded()
        .with_trusted(keys)
        .allowing_unsigned(args.allow_unsigned))
}

/// Loads a signing key; an encrypted one takes its password from the password file, else
/// from the terminal. Never from an argument (it would show in `ps`).
pub(super) fn load_key(path: &Path, password: &PasswordArgs) -> Result<SecretKey> {
    let file = password.sign_password_file.clone();
    let mut read_error = None;
    let key = SecretKey::load(path, || match &file {
        Some(f) => match std::fs::read_to_string(f) {
            Ok(text) => Some(text.lines().next().unwrap_or("").to_owned()),
            Err(e) => {
                read_error = Some(format!("password file {}: {e}", f.display()));
                None
            }
        },
        None if std::io::stdin().is_terminal() => {
            rpassword::prompt_password(format!("Password of signing key {}: ", path.display())).ok()
        }
        None => None,
    });
    if let Some(e) = read_error {
        bail!(e);
    }
    Ok(key?)
}

fn sign(
    key: &Path,
    password: &PasswordArgs,
    files: &[PathBuf],
    printer: &Printer,
) -> Result<ExitCode> {
    let key = load_key(key, password)?;
    let mut out = Vec::new();
    for f in files {
        let data = std::fs::read(f).with_context(|| format!("reading {}", f.display()))?;
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let comment = format!("timestamp:{}\tfile:{name}", now_secs());
        let sig = key.sign(&data, &comment)?;
        let dest = sig_path(f);
        write_new(&dest, &sig)?;
        out.push(json!({"file": f, "signature": dest, "key_id": key.id}));
        if !printer.json_mode() {
            printer.note(format_args!(
                "Signed {} with key ID {}: {}",
                f.display(),
                key.id,
                dest.display()
            ));
        }
    }
    if printer.json_mode() {
        printer.line(json!(out))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn verify(trust: &Trust, files: &[PathBuf], printer: &Printer) -> Result<ExitCode> {
    let mut out = Vec::new();
    for f in files {
        let data = std::fs::read(f).with_context(|| format!("reading {}", f.display()))?;
        let sig_file = sig_path(f);
        let sig = match std::fs::read(&sig_file) {
            Ok(s) => Some(s),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e).with_context(|| format!("reading {}", sig_file.display())),
        };
        let signer = trust.check(&f.display().to_string(), &data, sig.as_deref())?;
        if printer.json_mode() {
            out.push(json!({"file": f, "signer": signer}));
        } else {
            printer.line(format_args!("OK {}: {signer}", f.display()))?;
        }
    }
    if printer.json_mode() {
        printer.line(json!(out))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn sig_path(f: &Path) -> PathBuf {
    let mut s = f.as_os_str().to_owned();
    s.push(SIG_SUFFIX);
    PathBuf::from(s)
}

/// Writes `dest` through a temporary file renamed over it, so a reader never sees half.
fn write_new(dest: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = dest.with_extension("minisig.partial");
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, dest).with_context(|| format!("writing {}", dest.display()))
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
