//! Turns the OCI `User` string into uid, gid and supplementary groups, using the image's own
//! `/etc/passwd` and `/etc/group` the way OCI runtimes do: a numeric uid need not exist in
//! passwd (then gid 0 unless given), a name must; supplementary groups are every group in
//! /etc/group that lists the user's name.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserError {
    UnknownUser(String),
    UnknownGroup(String),
}

impl fmt::Display for UserError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UserError::UnknownUser(u) => write!(
                f,
                "user \"{u}\" is not in the image's /etc/passwd; use a numeric uid or add the user"
            ),
            UserError::UnknownGroup(g) => write!(
                f,
                "group \"{g}\" is not in the image's /etc/group; use a numeric gid or add the group"
            ),
        }
    }
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
}

/// `passwd` and `group` are the files' contents, `None` when the image has no such file.
pub fn resolve(
    user: Option<&str>,
    passwd: Option<&str>,
    group: Option<&str>,
) -> Result<Credentials, UserError> {
    let spec = user.unwrap_or("0");
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let users: Vec<PasswdEntry<'_>> = passwd.map(parse_passwd).unwrap_or_default();
    let entry = match user_part.parse::<u32>() {
        Ok(uid) => users.iter().find(|e| e.uid == uid),
        Err(_) => Some(
            users
                .iter()
                .find(|e| e.name == user_part)
                .ok_or_else(|| UserError::UnknownUser(user_part.to_string()))?,
        ),
    };
    let uid = match (user_part.parse::<u32>(), &entry) {
        (Ok(uid), _) => uid,
        (Err(_), Some(e)) => e.uid,
        (Err(_), None) => return Err(UserError::UnknownUser(user_part.to_string())),
    };
    let gid = match group_part {
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group_entries(group)
                .find(|(name, _, _)| *name == g)
                .map(|(_, gid, _)| gid)
                .ok_or_else(|| UserError::UnknownGroup(g.to_string()))?,
        },
        None => entry.map_or(0, |e| e.gid),
    };
    let mut groups: Vec<u32> = Vec::new();
    if let Some(e) = entry {
        for (_, g, members) in group_entries(group) {
            if members.split(',').any(|m| m.trim() == e.name) && !groups.contains(&g) {
                groups.push(g);
            }
        }
    }
    Ok(Credentials { uid, gid, groups })
}

fn parse_passwd(text: &str) -> Vec<PasswdEntry<'_>> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split(':');
            let name = f.next()?;
            let _password = f.next()?;
            let uid = f.next()?.parse().ok()?;
            let gid = f.next()?.parse().ok()?;
            Some(PasswdEntry { name, uid, gid })
        })
        .collect()
}

/// (name, gid, comma-separated members) for each well-formed line.
fn group_entries(text: Option<&str>) -> impl Iterator<Item = (&str, u32, &str)> {
    text.unwrap_or("").lines().filter_map(|line| {
        let mut f = line.split(':');
        let name = f.next()?;
        let _password = f.next()?;
        let gid = f.next()?.parse().ok()?;
        Some((name, gid, f.next().unwrap_or("")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\napp:x:1000:1001::/home/app:/bin/sh\n# comment\nbroken line\n";
    const GROUP: &str =
        "root:x:0:\nwheel:x:10:root,app\napp:x:1001:\naudio:x:29:other, app\nnogroup:x:65534:\n";

    fn creds(uid: u32, gid: u32, groups: &[u32]) -> Credentials {
        Credentials {
            uid,
            gid,
            groups: groups.to_vec(),
        }
    }

    #[test]
    fn absent_user_is_root_with_roots_groups() {
        assert_eq!(
            resolve(None, Some(PASSWD), Some(GROUP)),
            Ok(creds(0, 0, &[10]))
        );
    }

    #[test]
    fn names_resolve_with_primary_and_supplementary_groups() {
        assert_eq!(
            resolve(Some("app"), Some(PASSWD), Some(GROUP)),
            Ok(creds(1000, 1001, &[10, 29]))
        );
        assert_eq!(
            resolve(Some("nobody"), Some(PASSWD), Some(GROUP)),
            Ok(creds(65534, 65534, &[]))
        );
    }

    #[test]
    fn numeric_forms_need_no_files() {
        assert_eq!(
            resolve(Some("10001:10001"), None, None),
            Ok(creds(10001, 10001, &[]))
        );
        assert_eq!(resolve(Some("472"), None, None), Ok(creds(472, 0, &[])));
        // A numeric uid that passwd knows gets that entry's gid and groups.
        assert_eq!(
            resolve(Some("1000"), Some(PASSWD), Some(GROUP)),
            Ok(creds(1000, 1001, &[10, 29]))
        );
    }

    #[test]
    fn explicit_group_overrides_primary_gid() {
        assert_eq!(
            resolve(Some("app:nogroup"), Some(PASSWD), Some(GROUP)),
            Ok(creds(1000, 65534, &[10, 29]))
        );
        assert_eq!(
            resolve(Some("65532:0"), Some(PASSWD), Some(GROUP)),
            Ok(creds(65532, 0, &[]))
        );
    }

    #[test]
    fn unknown_names_are_errors_that_say_how_to_fix() {
        let e = resolve(Some("grafana"), Some(PASSWD), Some(GROUP)).unwrap_err();
        assert_eq!(e, UserError::UnknownUser("grafana".into()));
        assert!(e.to_string().contains("numeric uid"), "{e}");
        assert_eq!(
            resolve(Some("app"), None, None),
            Err(UserError::UnknownUser("app".into()))
        );
        assert_eq!(
            resolve(Some("0:staff"), Some(PASSWD), Some(GROUP)),
            Err(UserError::UnknownGroup("staff".into()))
        );
    }
}
