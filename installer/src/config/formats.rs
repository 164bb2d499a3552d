//! Checks of the small text formats the config carries: durations in the dialects of each
//! service, Incus snapshot schedules and expiries, names, domains. Each returns the reason a
//! value is wrong, worded for the operator.

use std::net::IpAddr;

/// Prometheus/Alertmanager durations: `30d`, `2w`, `1h30m`, `15s` (units y w d h m s ms, each
/// at most once, largest first). Returns milliseconds.
pub fn prometheus_duration(s: &str) -> Result<u64, String> {
    const UNITS: [(&str, u64); 7] = [
        ("y", 365 * 86_400_000),
        ("w", 7 * 86_400_000),
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
        ("ms", 1),
    ];
    let parts = split_number_unit(s).ok_or_else(|| {
        format!("`{s}` is not a duration: write a number and a unit (y, w, d, h, m, s, ms), like 30d or 1h30m")
    })?;
    let mut last = None;
    let mut total: u64 = 0;
    for (n, unit) in parts {
        let pos = UNITS.iter().position(|(u, _)| *u == unit).ok_or_else(|| {
            format!("`{s}` has an unknown unit `{unit}`: use y, w, d, h, m, s or ms")
        })?;
        if last.is_some_and(|l| pos <= l) {
            return Err(format!(
                "`{s}`: units must go from largest to smallest, each once (like 1d12h)"
            ));
        }
        last = Some(pos);
        total = total.saturating_add(n.saturating_mul(UNITS[pos].1));
    }
    if total == 0 {
        return Err(format!("`{s}` is zero"));
    }
    Ok(total)
}

/// Go's `time.ParseDuration` subset that step-ca and Caddy accept: `24h`, `1m`, `90s`,
/// `1h30m`. Returns milliseconds.
pub fn go_duration(s: &str) -> Result<u64, String> {
    let parts = split_number_unit(s).ok_or_else(|| {
        format!("`{s}` is not a duration: write a number and a unit (h, m, s, ms), like 24h or 1m")
    })?;
    let mut total: u64 = 0;
    for (n, unit) in parts {
        let mult = match unit.as_str() {
            "h" => 3_600_000,
            "m" => 60_000,
            "s" => 1000,
            "ms" => 1,
            "d" | "w" | "y" => {
                return Err(format!(
                    "`{s}`: this setting takes hours at most (h, m, s), e.g. 24h instead of 1d"
                ));
            }
            _ => {
                return Err(format!(
                    "`{s}` has an unknown unit `{unit}`: use h, m, s or ms"
                ));
            }
        };
        total = total.saturating_add(n.saturating_mul(mult));
    }
    if total == 0 {
        return Err(format!("`{s}` is zero"));
    }
    Ok(total)
}

/// Loki's retention period in the seed's hours form (`720h`). Returns hours.
pub fn hours(s: &str) -> Result<u64, String> {
    let n = s
        .strip_suffix('h')
        .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|n| n.parse::<u64>().ok())
        .ok_or_else(|| {
            format!(
                "`{s}` is not in hours form: write a whole number of hours, like 720h (30 days)"
            )
        })?;
    Ok(n)
}

/// `1h30m` -> [(1, "h"), (30, "m")]; `None` when it is not numbers followed by letters.
fn split_number_unit(s: &str) -> Option<Vec<(u64, String)>> {
    let mut out = Vec::new();
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let letters = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        if letters == 0 {
            return None;
        }
        out.push((n, rest[..letters].to_string()));
        rest = &rest[letters..];
    }
    Some(out)
}

/// Incus `snapshots.schedule`: a shorthand or a 5-field cron expression.
pub fn snapshot_schedule(s: &str) -> Result<(), String> {
    const SHORTHANDS: [&str; 7] = [
        "@hourly",
        "@daily",
        "@midnight",
        "@weekly",
        "@monthly",
        "@yearly",
        "@annually",
    ];
    if s.starts_with('@') {
        return if SHORTHANDS.contains(&s) {
            Ok(())
        } else {
            Err(format!(
                "`{s}` is not a schedule Incus knows: use @hourly, @daily, @weekly, @monthly, @yearly or a cron expression like \"0 2 * * *\""
            ))
        };
    }
    let fields: Vec<&str> = s.split_whitespace().collect();
    if fields.len() != 5 {
        return Err(format!(
            "`{s}` is not a schedule: use @daily, @weekly, ... or a 5-field cron expression (minute hour day-of-month month day-of-week), like \"0 2 * * *\""
        ));
    }
    const RANGES: [(&str, u32, u32); 5] = [
        ("minute", 0, 59),
        ("hour", 0, 23),
        ("day of month", 1, 31),
        ("month", 1, 12),
        ("day of week", 0, 7),
    ];
    for (field, (what, lo, hi)) in fields.iter().zip(RANGES) {
        cron_field(field, lo, hi).map_err(|e| format!("`{s}`: {what} field `{field}` {e}"))?;
    }
    Ok(())
}

fn cron_field(field: &str, lo: u32, hi: u32) -> Result<(), String> {
    for item in field.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((r, st)) => (r, Some(st)),
            None => (item, None),
        };
        if let Some(st) = step {
            match st.parse::<u32>() {
                Ok(n) if n >= 1 => {}
                _ => return Err(format!("has a bad step `{st}`")),
            }
        }
        if range == "*" {
            continue;
        }
        let bounds: Vec<&str> = range.split('-').collect();
        if bounds.is_empty() || bounds.len() > 2 {
            return Err("is not a number, range or *".to_string());
        }
        let mut nums = Vec::new();
        for b in bounds {
            let n: u32 = b
                .parse()
                .map_err(|_| "is not a number, range or *".to_string())?;
            if n < lo || n > hi {
                return Err(format!("is outside {lo}-{hi}"));
            }
            nums.push(n);
        }
        if nums.len() == 2 && nums[0] > nums[1] {
            return Err("has a range that runs backwards".to_string());
        }
    }
    Ok(())
}

/// Incus `snapshots.expiry`: space-separated `<n><unit>` with M (minutes), H (hours), d, w,
/// m (months), y, e.g. `7d`, `2w`, `1m 2w`.
pub fn snapshot_expiry(s: &str) -> Result<(), String> {
    let bad = || {
        format!(
            "`{s}` is not an Incus expiry: write amounts like 7d, 2w or 1m (units: M minutes, H hours, d days, w weeks, m months, y years)"
        )
    };
    let mut any = false;
    for token in s.split_whitespace() {
        let (num, unit) =
            token.split_at(token.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?);
        if num.is_empty() || !matches!(unit, "M" | "H" | "d" | "w" | "m" | "y") {
            return Err(bad());
        }
        any = true;
    }
    if any { Ok(()) } else { Err(bad()) }
}

/// Incus object names (instances, volumes, profiles): letters, digits and hyphens, at most
/// `max` long, starting with a letter, not ending with a hyphen.
pub fn incus_name(s: &str, max: usize) -> Result<(), String> {
    if s.is_empty() {
        return Err("is empty".to_string());
    }
    if s.len() > max {
        return Err(format!(
            "`{s}` is {} characters long; Incus allows at most {max}",
            s.len()
        ));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
    {
        return Err(format!(
            "`{s}` contains `{c}`; use only letters, digits and hyphens"
        ));
    }
    if !s.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return Err(format!("`{s}` must start with a letter"));
    }
    if s.ends_with('-') {
        return Err(format!("`{s}` must not end with a hyphen"));
    }
    Ok(())
}

/// Project and storage pool names, which Incus also allows underscores in.
pub fn incus_label(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("is empty".to_string());
    }
    if s.len() > 63 {
        return Err(format!("`{s}` is longer than 63 characters"));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Err(format!(
            "`{s}` contains `{c}`; use letters, digits, `-` and `_`"
        ));
    }
    if !s.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(format!("`{s}` must start with a letter or digit"));
    }
    Ok(())
}

/// Domains that only resolve on the operator's own machines or network; anything else is
/// reachable from the internet once DNS points at the host.
const LOCAL_SUFFIXES: [&str; 6] = [
    ".localhost",
    ".local",
    ".internal",
    ".home.arpa",
    ".test",
    ".lan",
];

pub fn is_local_domain(domain: &str) -> bool {
    let d = domain.trim_end_matches('.').to_ascii_lowercase();
    d == "localhost" || d.parse::<IpAddr>().is_ok() || LOCAL_SUFFIXES.iter().any(|s| d.ends_with(s))
}

/// A DNS name Caddy can serve: labels of letters, digits and hyphens (a leading `*.` allowed).
pub fn domain_name(s: &str) -> Result<(), String> {
    if s.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    let body = s.strip_prefix("*.").unwrap_or(s);
    if body.is_empty() || body.len() > 253 {
        return Err(format!("`{s}` is not a domain name"));
    }
    for label in body.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!("`{s}` is not a domain name (label `{label}`)"));
        }
    }
    Ok(())
}

/// The closest candidate by edit distance, when close enough to be a typo.
pub fn suggest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    // `retention_delay` means `retention_delete_delay` more likely than `retention_period`,
    // though the latter is fewer edits away: a key holding every word typed wins first.
    let parts: Vec<&str> = word.split('_').filter(|p| !p.is_empty()).collect();
    let holding_all = candidates
        .iter()
        .filter(|c| parts.len() > 1 && parts.iter().all(|p| c.split('_').any(|cp| cp == *p)))
        .min_by_key(|c| c.len());
    if let Some(c) = holding_all {
        return Some(c);
    }
    candidates
        .iter()
        .map(|c| (levenshtein(word, c), *c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_durations() {
        assert_eq!(prometheus_duration("30d").unwrap(), 30 * 86_400_000);
        assert_eq!(prometheus_duration("1h30m").unwrap(), 5_400_000);
        assert!(prometheus_duration("2w").is_ok());
        assert!(
            prometheus_duration("30")
                .unwrap_err()
                .contains("not a duration")
        );
        assert!(
            prometheus_duration("30x")
                .unwrap_err()
                .contains("unknown unit")
        );
        assert!(
            prometheus_duration("30m1h")
                .unwrap_err()
                .contains("largest to smallest")
        );
        assert!(prometheus_duration("0d").unwrap_err().contains("zero"));
    }

    #[test]
    fn go_durations_and_hours() {
        assert_eq!(go_duration("24h").unwrap(), 86_400_000);
        assert!(go_duration("1d").unwrap_err().contains("24h instead of 1d"));
        assert_eq!(hours("720h").unwrap(), 720);
        assert!(hours("30d").unwrap_err().contains("hours form"));
        assert!(hours("h").is_err());
    }

    #[test]
    fn schedules_and_expiries() {
        for ok in [
            "@daily",
            "@weekly",
            "@hourly",
            "0 2 * * *",
            "*/15 0-6 1,15 * 1-5",
        ] {
            assert!(snapshot_schedule(ok).is_ok(), "{ok}");
        }
        assert!(
            snapshot_schedule("@fortnightly")
                .unwrap_err()
                .contains("@hourly")
        );
        assert!(
            snapshot_schedule("0 2 * *")
                .unwrap_err()
                .contains("5-field")
        );
        assert!(
            snapshot_schedule("0 25 * * *")
                .unwrap_err()
                .contains("hour field `25` is outside 0-23")
        );
        for ok in ["7d", "2w", "4w", "1m 2w", "6H"] {
            assert!(snapshot_expiry(ok).is_ok(), "{ok}");
        }
        for bad in ["", "7", "7days", "d7"] {
            assert!(snapshot_expiry(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_and_domains() {
        assert!(incus_name("grafana02", 63).is_ok());
        assert!(
            incus_name("2grafana", 63)
                .unwrap_err()
                .contains("start with a letter")
        );
        assert!(incus_name("-g", 63).is_err());
        assert!(incus_name("g_1", 63).unwrap_err().contains("`_`"));
        assert!(
            incus_name(&"a".repeat(64), 63)
                .unwrap_err()
                .contains("at most 63")
        );
        assert!(is_local_domain("grafana.atlas.localhost"));
        assert!(is_local_domain("grafana.home.arpa"));
        assert!(is_local_domain("10.0.0.5"));
        assert!(!is_local_domain("grafana.example.com"));
        assert!(!is_local_domain("notlocalhost"));
        assert!(domain_name("grafana.example.com").is_ok());
        assert!(domain_name("bad_name.com").is_err());
        assert_eq!(
            suggest("retention_tim", &["retention_time", "retention_size"]),
            Some("retention_time")
        );
        assert_eq!(suggest("zzz", &["retention_time"]), None);
        let loki = ["retention_period", "retention_delete_delay"];
        assert_eq!(
            suggest("retention_delay", &loki),
            Some("retention_delete_delay")
        );
    }
}
