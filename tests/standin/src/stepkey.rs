//! The password contract of step-ca's keys, for the stand-in: `$STEPPATH/secrets/root_ca_key`
//! and `intermediate_ca_key` are "encrypted" with the CA password (here: a file holding a
//! salted SHA-256 of it, clearly marked as not a key). Like step-ca, the stand-in refuses to
//! start when `--password-file` does not open its intermediate key, and like the `step` CLI,
//! `step crypto change-pass KEY --password-file OLD --new-password-file NEW [-f]` re-encrypts
//! a key only when OLD opens it. That is all the installer's password rotation relies on.

use std::path::Path;

use sha2::{Digest, Sha256};

pub const KEYS: [&str; 2] = ["secrets/root_ca_key", "secrets/intermediate_ca_key"];
const HEADER: &str = "ATLAS STAND-IN ENCRYPTED KEY (not a key; step-ca stand-in)";

/// The password as step reads it from a file: trailing whitespace dropped.
pub fn read_password(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path)
        .map(|s| s.trim_end().to_string())
        .map_err(|e| format!("error reading {}: {e}", path.display()))
}

pub fn seal(password: &str, salt: &str) -> String {
    let digest = hex(&Sha256::digest(format!("{salt}\0{password}")));
    format!("{HEADER}\nsalt {salt}\nsha256 {digest}\n")
}

/// Whether `password` opens the sealed `text`.
pub fn opens(text: &str, password: &str) -> Result<bool, String> {
    let mut lines = text.lines();
    if lines.next() != Some(HEADER) {
        return Err("not a stand-in key".into());
    }
    let salt = lines
        .next()
        .and_then(|l| l.strip_prefix("salt "))
        .ok_or("no salt")?;
    Ok(seal(password, salt) == text)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn fresh_salt() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    hex(&Sha256::digest(format!("{nanos}:{}", std::process::id()))[..8])
}

fn write_private(path: &Path, text: &str) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).map_err(|e| format!("error writing {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("error writing {}: {e}", path.display()))
}

/// At start: seals the keys with the password on first start, and from then on refuses a
/// password that does not open the intermediate key (step-ca cannot decrypt it either).
pub fn check_or_create(step_path: &Path, password_file: Option<&Path>) -> Result<(), String> {
    let Some(pw_path) = password_file else {
        return Ok(());
    };
    let password = read_password(pw_path)?;
    std::fs::create_dir_all(step_path.join("secrets")).map_err(|e| e.to_string())?;
    for key in KEYS {
        let path = step_path.join(key);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                if !opens(&text, &password)? {
                    return Err(format!(
                        "error decrypting {}: x509: decryption password incorrect",
                        path.display()
                    ));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                write_private(&path, &seal(&password, &fresh_salt()))?;
            }
            Err(e) => return Err(format!("error reading {}: {e}", path.display())),
        }
    }
    Ok(())
}

/// `step ARGS...`; returns the exit status. Only `crypto change-pass` is known.
pub fn step_cli(args: &[String]) -> Result<String, String> {
    let [crypto, change, rest @ ..] = args else {
        return Err(usage());
    };
    if crypto != "crypto" || change != "change-pass" {
        return Err(usage());
    }
    let mut key = None;
    let (mut old, mut new) = (None, None);
    let mut it = rest.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--password-file" => old = it.next(),
            "--new-password-file" => new = it.next(),
            "-f" | "--force" => {}
            s if !s.starts_with('-') && key.is_none() => key = Some(a),
            _ => return Err(usage()),
        }
    }
    let (Some(key), Some(old), Some(new)) = (key, old, new) else {
        return Err(usage());
    };
    let path = Path::new(key);
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("error reading {}: {e}", path.display()))?;
    if !opens(&text, &read_password(Path::new(old))?)? {
        return Err(format!(
            "error decrypting {}: x509: decryption password incorrect",
            path.display()
        ));
    }
    write_private(path, &seal(&read_password(Path::new(new))?, &fresh_salt()))?;
    Ok(format!("Your key has been saved in {}.", path.display()))
}

fn usage() -> String {
    "usage (atlas stand-in for the step CLI): step crypto change-pass KEY --password-file FILE \
     --new-password-file FILE [-f]"
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_open_with_their_password_only_and_change_pass_needs_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let pw = |name: &str, v: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, format!("{v}\n")).unwrap();
            p.to_str().unwrap().to_string()
        };
        let (a, b) = (pw("a", "alpha"), pw("b", "beta"));
        check_or_create(dir.path(), Some(Path::new(&a))).unwrap();
        check_or_create(dir.path(), Some(Path::new(&a))).unwrap();
        let e = check_or_create(dir.path(), Some(Path::new(&b))).unwrap_err();
        assert!(e.contains("decryption password incorrect"), "{e}");

        let key = dir.path().join(KEYS[1]).to_str().unwrap().to_string();
        let args = |old: &str, new: &str| -> Vec<String> {
            [
                "crypto",
                "change-pass",
                &key,
                "--password-file",
                old,
                "--new-password-file",
                new,
                "-f",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect()
        };
        assert!(step_cli(&args(&b, &b)).is_err(), "wrong old password");
        step_cli(&args(&a, &b)).unwrap();
        step_cli(&args(&b, &b)).unwrap();
        assert!(
            step_cli(&args(&a, &b)).is_err(),
            "old password no longer opens it"
        );
        // Only the intermediate was changed: the CA now refuses both passwords until the root
        // key follows.
        assert!(check_or_create(dir.path(), Some(Path::new(&b))).is_err());
        let root = dir.path().join(KEYS[0]).to_str().unwrap().to_string();
        let mut r = args(&a, &b);
        r[2] = root;
        step_cli(&r).unwrap();
        check_or_create(dir.path(), Some(Path::new(&b))).unwrap();
        assert!(step_cli(&["crypto".into()]).unwrap_err().contains("usage"));
    }
}
