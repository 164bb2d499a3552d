//! The two files atlas-init reads, shared word for word with the image builder (which writes
//! `service.json`) and the installer (which writes `network.json`) via `#[path]`, so the writer
//! and the reader cannot drift apart. The format is documented in `image-builder/src/init.rs`.
//!
//! Everything is validated when read *and* before it is written: a file that atlas-init would
//! refuse is never produced, and a hand-edited file is refused with the field that is wrong.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use super::json::{self, Value};

/// The only format version this code reads and writes.
pub const FORMAT_VERSION: i64 = 1;
/// Used when `stop_grace_period` is absent (same default as `docker stop`).
pub const DEFAULT_STOP_GRACE_PERIOD: u32 = 10;
const MAX_STOP_GRACE_PERIOD: i64 = 3600;

/// Why a file was refused. `field` is a path such as `interfaces[0].gateway4`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpecError {
    Syntax(json::ParseError),
    Invalid { field: String, message: String },
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpecError::Syntax(e) => write!(f, "not valid JSON: {e}"),
            SpecError::Invalid { field, message } if field.is_empty() => f.write_str(message),
            SpecError::Invalid { field, message } => write!(f, "{field}: {message}"),
        }
    }
}

impl std::error::Error for SpecError {}

fn invalid(field: &str, message: impl Into<String>) -> SpecError {
    SpecError::Invalid {
        field: field.to_string(),
        message: message.into(),
    }
}

// ---------------------------------------------------------------------------------------------
// service.json

/// What to run: `/etc/atlas/service.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    /// The image's entrypoint; may be empty when `cmd` holds the whole command line.
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// Exactly the environment the service gets, `KEY=VALUE` each; nothing is added.
    pub env: Vec<String>,
    /// Absolute; `None` runs in `/`.
    pub working_dir: Option<String>,
    /// `uid`, `uid:gid`, `name`, `name:group` (OCI `User` syntax); `None` is root.
    pub user: Option<String>,
    /// Seconds between SIGTERM and SIGKILL when the container is stopped.
    pub stop_grace_period: u32,
}

impl ServiceSpec {
    /// The command line: entrypoint followed by cmd, as OCI runtimes do.
    pub fn argv(&self) -> Vec<&str> {
        self.entrypoint
            .iter()
            .chain(&self.cmd)
            .map(String::as_str)
            .collect()
    }

    /// The value of `key` in `env`, used for the PATH search.
    pub fn env_var(&self, key: &str) -> Option<&str> {
        self.env
            .iter()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
    }

    /// Sets `key` the way a later `ENV` line or a recipe override does: replaces the value in
    /// place if the key exists, appends otherwise (keys stay unique, as validation requires).
    pub fn set_env(&mut self, key: &str, value: &str) {
        let entry = format!("{key}={value}");
        match self
            .env
            .iter_mut()
            .find(|kv| kv.split_once('=').map(|(k, _)| k) == Some(key))
        {
            Some(kv) => *kv = entry,
            None => self.env.push(entry),
        }
    }

    pub fn from_json(text: &str) -> Result<Self, SpecError> {
        let root = json::parse(text).map_err(SpecError::Syntax)?;
        let obj = Obj::new(&root, "")?;
        obj.only(&[
            "version",
            "entrypoint",
            "cmd",
            "env",
            "working_dir",
            "user",
            "stop_grace_period",
        ])?;
        check_version(&obj)?;
        let spec = ServiceSpec {
            entrypoint: obj.strings("entrypoint")?,
            cmd: obj.strings("cmd")?,
            env: obj.strings("env")?,
            working_dir: obj.opt_string("working_dir")?,
            user: obj.opt_string("user")?,
            stop_grace_period: match obj.get("stop_grace_period") {
                None => DEFAULT_STOP_GRACE_PERIOD,
                Some(v) => int(v, "stop_grace_period", 0, MAX_STOP_GRACE_PERIOD)? as u32,
            },
        };
        spec.validate()?;
        Ok(spec)
    }

    /// Validates, then renders the file; a spec atlas-init would refuse is never written.
    pub fn to_json(&self) -> Result<String, SpecError> {
        self.validate()?;
        Ok(json::to_string_pretty(&self.to_value()))
    }

    /// The same document on one line (an image label, an Incus image property); validated
    /// like the file.
    pub fn to_json_compact(&self) -> Result<String, SpecError> {
        self.validate()?;
        Ok(json::to_string_compact(&self.to_value()))
    }

    /// This spec running `argv` instead of its own command line, after `wrapper` (an
    /// entrypoint script of the image that ends in `exec "$@"`; empty for none). Everything
    /// else (environment, user, working directory, grace period) stays the image's, so a new
    /// image brings its own and only the command line is replaced. Validated.
    pub fn with_command(&self, wrapper: &[String], argv: &[String]) -> Result<Self, SpecError> {
        let spec = ServiceSpec {
            entrypoint: wrapper.to_vec(),
            cmd: argv.to_vec(),
            ..self.clone()
        };
        spec.validate()?;
        Ok(spec)
    }

    fn to_value(&self) -> Value {
        let mut f = vec![("version".to_string(), Value::Int(FORMAT_VERSION))];
        f.push(("entrypoint".into(), str_array(&self.entrypoint)));
        f.push(("cmd".into(), str_array(&self.cmd)));
        f.push(("env".into(), str_array(&self.env)));
        if let Some(w) = &self.working_dir {
            f.push(("working_dir".into(), Value::Str(w.clone())));
        }
        if let Some(u) = &self.user {
            f.push(("user".into(), Value::Str(u.clone())));
        }
        f.push((
            "stop_grace_period".into(),
            Value::Int(self.stop_grace_period.into()),
        ));
        Value::Object(f)
    }

    pub fn validate(&self) -> Result<(), SpecError> {
        if self.argv().is_empty() {
            return Err(invalid(
                "cmd",
                "entrypoint and cmd are both empty: nothing to run",
            ));
        }
        if self.argv()[0].is_empty() {
            return Err(invalid("entrypoint", "the program name is empty"));
        }
        for (name, list) in [("entrypoint", &self.entrypoint), ("cmd", &self.cmd)] {
            for (i, arg) in list.iter().enumerate() {
                no_nul(arg, &format!("{name}[{i}]"))?;
            }
        }
        let mut keys: Vec<&str> = Vec::new();
        for (i, kv) in self.env.iter().enumerate() {
            let field = format!("env[{i}]");
            no_nul(kv, &field)?;
            let key = match kv.split_once('=') {
                Some((k, _)) if !k.is_empty() => k,
                _ => return Err(invalid(&field, format!("\"{kv}\" is not KEY=VALUE"))),
            };
            if keys.contains(&key) {
                return Err(invalid(&field, format!("{key} is set twice")));
            }
            keys.push(key);
        }
        if let Some(w) = &self.working_dir {
            no_nul(w, "working_dir")?;
            if !w.starts_with('/') {
                return Err(invalid(
                    "working_dir",
                    format!("\"{w}\" is not an absolute path"),
                ));
            }
        }
        if let Some(u) = &self.user {
            validate_user(u)?;
        }
        if i64::from(self.stop_grace_period) > MAX_STOP_GRACE_PERIOD {
            return Err(invalid(
                "stop_grace_period",
                format!("at most {MAX_STOP_GRACE_PERIOD} seconds"),
            ));
        }
        Ok(())
    }
}

fn validate_user(u: &str) -> Result<(), SpecError> {
    let ok_part = |p: &str| !p.is_empty() && !p.contains(|c: char| c.is_whitespace() || c == '\0');
    let ok = match u.split_once(':') {
        Some((user, group)) => ok_part(user) && ok_part(group) && !group.contains(':'),
        None => ok_part(u),
    };
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "user",
            format!("\"{u}\" is not one of uid, uid:gid, name, name:group"),
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// network.json

/// Static network configuration: `/etc/atlas/network.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkSpec {
    pub interfaces: Vec<InterfaceSpec>,
    pub dns: Vec<IpAddr>,
    pub search: Vec<String>,
    pub hosts: Vec<HostEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceSpec {
    pub name: String,
    pub ipv4: Option<Ipv4Cidr>,
    pub gateway4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Cidr>,
    pub gateway6: Option<Ipv6Addr>,
    pub mtu: Option<u32>,
}

impl InterfaceSpec {
    /// An interface with only a name; fill in the rest.
    pub fn named(name: &str) -> Self {
        InterfaceSpec {
            name: name.to_string(),
            ipv4: None,
            gateway4: None,
            ipv6: None,
            gateway6: None,
            mtu: None,
        }
    }
}

/// One `/etc/hosts` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostEntry {
    pub ip: IpAddr,
    pub names: Vec<String>,
}

/// An address with its prefix length, e.g. `10.50.0.12/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

/// An address with its prefix length, e.g. `fd00:50::c/64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Cidr {
    pub addr: Ipv6Addr,
    pub prefix: u8,
}

fn split_cidr(s: &str, max: u8) -> Option<(&str, u8)> {
    let (a, p) = s.split_once('/')?;
    let prefix = p.parse::<u8>().ok().filter(|p| *p <= max)?;
    // u8::from_str accepts "+8"; a prefix is digits only.
    p.bytes().all(|b| b.is_ascii_digit()).then_some((a, prefix))
}

impl FromStr for Ipv4Cidr {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        let (a, prefix) = split_cidr(s, 32).ok_or(())?;
        Ok(Ipv4Cidr {
            addr: a.parse().map_err(|_| ())?,
            prefix,
        })
    }
}

impl FromStr for Ipv6Cidr {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        let (a, prefix) = split_cidr(s, 128).ok_or(())?;
        Ok(Ipv6Cidr {
            addr: a.parse().map_err(|_| ())?,
            prefix,
        })
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl fmt::Display for Ipv6Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Ipv4Cidr {
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX
            .checked_shl(32 - u32::from(self.prefix))
            .unwrap_or(0);
        u32::from(self.addr) & mask == u32::from(ip) & mask
    }
}

impl Ipv6Cidr {
    pub fn contains(&self, ip: Ipv6Addr) -> bool {
        let mask = u128::MAX
            .checked_shl(128 - u32::from(self.prefix))
            .unwrap_or(0);
        u128::from(self.addr) & mask == u128::from(ip) & mask
    }
}

impl NetworkSpec {
    pub fn from_json(text: &str) -> Result<Self, SpecError> {
        let root = json::parse(text).map_err(SpecError::Syntax)?;
        let obj = Obj::new(&root, "")?;
        obj.only(&["version", "interfaces", "dns", "search", "hosts"])?;
        check_version(&obj)?;
        let spec = NetworkSpec {
            interfaces: obj
                .array("interfaces")?
                .iter()
                .enumerate()
                .map(|(i, v)| interface(v, i))
                .collect::<Result<_, _>>()?,
            dns: obj
                .strings("dns")?
                .iter()
                .enumerate()
                .map(|(i, s)| parse_field::<IpAddr>(s, &format!("dns[{i}]"), "an IP address"))
                .collect::<Result<_, _>>()?,
            search: obj.strings("search")?,
            hosts: obj
                .array("hosts")?
                .iter()
                .enumerate()
                .map(|(i, v)| host_entry(v, i))
                .collect::<Result<_, _>>()?,
        };
        spec.validate()?;
        Ok(spec)
    }

    /// Validates, then renders the file; a spec atlas-init would refuse is never written.
    pub fn to_json(&self) -> Result<String, SpecError> {
        self.validate()?;
        let interfaces = self.interfaces.iter().map(interface_value).collect();
        let hosts = self
            .hosts
            .iter()
            .map(|h| Value::Array(vec![Value::Str(h.ip.to_string()), str_array(&h.names)]))
            .collect();
        let dns: Vec<String> = self.dns.iter().map(IpAddr::to_string).collect();
        Ok(json::to_string_pretty(&Value::Object(vec![
            ("version".into(), Value::Int(FORMAT_VERSION)),
            ("interfaces".into(), Value::Array(interfaces)),
            ("dns".into(), str_array(&dns)),
            ("search".into(), str_array(&self.search)),
            ("hosts".into(), Value::Array(hosts)),
        ])))
    }

    pub fn validate(&self) -> Result<(), SpecError> {
        let mut names: Vec<&str> = Vec::new();
        for (i, iface) in self.interfaces.iter().enumerate() {
            validate_interface(iface, &format!("interfaces[{i}]"))?;
            if names.contains(&iface.name.as_str()) {
                return Err(invalid(
                    &format!("interfaces[{i}].name"),
                    format!("{} is listed twice", iface.name),
                ));
            }
            names.push(&iface.name);
        }
        for (family, count) in [
            (
                "gateway4",
                self.interfaces
                    .iter()
                    .filter(|i| i.gateway4.is_some())
                    .count(),
            ),
            (
                "gateway6",
                self.interfaces
                    .iter()
                    .filter(|i| i.gateway6.is_some())
                    .count(),
            ),
        ] {
            if count > 1 {
                return Err(invalid(
                    "interfaces",
                    format!("{family} is set on {count} interfaces; one default route per family"),
                ));
            }
        }
        for (i, s) in self.search.iter().enumerate() {
            hostname_like(s, &format!("search[{i}]"))?;
        }
        for (i, h) in self.hosts.iter().enumerate() {
            if h.names.is_empty() {
                return Err(invalid(&format!("hosts[{i}]"), "no names for this address"));
            }
            for (j, n) in h.names.iter().enumerate() {
                hostname_like(n, &format!("hosts[{i}][1][{j}]"))?;
            }
        }
        Ok(())
    }

    /// `/etc/resolv.conf`, or `None` when there is neither a server nor a search domain
    /// (then the image's own file is left alone).
    pub fn resolv_conf(&self) -> Option<String> {
        if self.dns.is_empty() && self.search.is_empty() {
            return None;
        }
        let mut out = String::from("# Written by atlas-init from /etc/atlas/network.json\n");
        for ip in &self.dns {
            out.push_str(&format!("nameserver {ip}\n"));
        }
        if !self.search.is_empty() {
            out.push_str(&format!("search {}\n", self.search.join(" ")));
        }
        Some(out)
    }

    /// `/etc/hosts`: localhost, this container's own name on its first addresses, then the
    /// configured entries.
    pub fn hosts_file(&self, hostname: Option<&str>) -> String {
        let mut out = String::from("# Written by atlas-init from /etc/atlas/network.json\n");
        out.push_str("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
        if let Some(name) = hostname.filter(|h| !h.is_empty()) {
            let own4 = self
                .interfaces
                .iter()
                .find_map(|i| i.ipv4)
                .map(|c| IpAddr::V4(c.addr));
            let own6 = self
                .interfaces
                .iter()
                .find_map(|i| i.ipv6)
                .map(|c| IpAddr::V6(c.addr));
            for ip in [own4, own6].into_iter().flatten() {
                out.push_str(&format!("{ip}\t{name}\n"));
            }
        }
        for h in &self.hosts {
            out.push_str(&format!("{}\t{}\n", h.ip, h.names.join(" ")));
        }
        out
    }
}

fn validate_interface(iface: &InterfaceSpec, path: &str) -> Result<(), SpecError> {
    let name = &iface.name;
    if name.is_empty()
        || name.len() > 15
        || name == "."
        || name == ".."
        || name.contains(|c: char| c == '/' || c == ':' || c.is_whitespace() || c == '\0')
    {
        return Err(invalid(
            &format!("{path}.name"),
            format!(
                "\"{name}\" is not a valid interface name (1-15 characters, no '/', ':' or spaces)"
            ),
        ));
    }
    if name == "lo" {
        return Err(invalid(
            &format!("{path}.name"),
            "lo is brought up automatically; do not list it",
        ));
    }
    match (iface.ipv4, iface.gateway4) {
        (None, Some(_)) => return Err(invalid(&format!("{path}.gateway4"), "set without ipv4")),
        (Some(net), Some(gw)) if !net.contains(gw) => {
            return Err(invalid(
                &format!("{path}.gateway4"),
                format!("{gw} is not inside {net}, so it cannot be reached"),
            ));
        }
        _ => {}
    }
    match (iface.ipv6, iface.gateway6) {
        (None, Some(_)) => return Err(invalid(&format!("{path}.gateway6"), "set without ipv6")),
        (Some(net), Some(gw)) if !net.contains(gw) && !is_link_local(gw) => {
            return Err(invalid(
                &format!("{path}.gateway6"),
                format!("{gw} is neither inside {net} nor link-local"),
            ));
        }
        _ => {}
    }
    if let Some(mtu) = iface.mtu {
        let min = if iface.ipv6.is_some() { 1280 } else { 68 };
        if !(min..=65535).contains(&mtu) {
            return Err(invalid(
                &format!("{path}.mtu"),
                format!("{mtu} is outside {min}..65535"),
            ));
        }
    }
    Ok(())
}

fn is_link_local(ip: Ipv6Addr) -> bool {
    ip.segments()[0] & 0xffc0 == 0xfe80
}

fn hostname_like(s: &str, field: &str) -> Result<(), SpecError> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("\"{s}\" is not a host or domain name"),
        ))
    }
}

fn interface(v: &Value, i: usize) -> Result<InterfaceSpec, SpecError> {
    let path = format!("interfaces[{i}]");
    let obj = Obj::new(v, &path)?;
    obj.only(&["name", "ipv4", "gateway4", "ipv6", "gateway6", "mtu"])?;
    let name = obj
        .opt_string("name")?
        .ok_or_else(|| invalid(&format!("{path}.name"), "missing"))?;
    let ipv4 = obj
        .opt_string("ipv4")?
        .map(|s| {
            parse_field(
                &s,
                &format!("{path}.ipv4"),
                "an IPv4 address with prefix, like 10.50.0.12/24",
            )
        })
        .transpose()?;
    let gateway4 = obj
        .opt_string("gateway4")?
        .map(|s| parse_field(&s, &format!("{path}.gateway4"), "an IPv4 address"))
        .transpose()?;
    let ipv6 = obj
        .opt_string("ipv6")?
        .map(|s| {
            parse_field(
                &s,
                &format!("{path}.ipv6"),
                "an IPv6 address with prefix, like fd00:50::c/64",
            )
        })
        .transpose()?;
    let gateway6 = obj
        .opt_string("gateway6")?
        .map(|s| parse_field(&s, &format!("{path}.gateway6"), "an IPv6 address"))
        .transpose()?;
    let mtu = obj
        .get("mtu")
        .map(|v| int(v, &format!("{path}.mtu"), 0, 65535))
        .transpose()?
        .map(|m| m as u32);
    Ok(InterfaceSpec {
        name,
        ipv4,
        gateway4,
        ipv6,
        gateway6,
        mtu,
    })
}

fn interface_value(i: &InterfaceSpec) -> Value {
    let mut f = vec![("name".to_string(), Value::Str(i.name.clone()))];
    let mut opt = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            f.push((k.to_string(), Value::Str(v)));
        }
    };
    opt("ipv4", i.ipv4.map(|c| c.to_string()));
    opt("gateway4", i.gateway4.map(|c| c.to_string()));
    opt("ipv6", i.ipv6.map(|c| c.to_string()));
    opt("gateway6", i.gateway6.map(|c| c.to_string()));
    if let Some(m) = i.mtu {
        f.push(("mtu".into(), Value::Int(m.into())));
    }
    Value::Object(f)
}

fn host_entry(v: &Value, i: usize) -> Result<HostEntry, SpecError> {
    let path = format!("hosts[{i}]");
    let shape = || {
        invalid(
            &path,
            format!("expected [\"IP\", [\"name\", ...]], found {}", v.kind()),
        )
    };
    let Value::Array(pair) = v else {
        return Err(shape());
    };
    let [Value::Str(ip), names] = pair.as_slice() else {
        return Err(shape());
    };
    Ok(HostEntry {
        ip: parse_field(ip, &format!("{path}[0]"), "an IP address")?,
        names: string_list(names, &format!("{path}[1]"))?,
    })
}

// ---------------------------------------------------------------------------------------------
// typed access to parsed JSON, with field paths in every error

fn check_version(obj: &Obj<'_>) -> Result<(), SpecError> {
    match obj.get("version") {
        None => Ok(()),
        Some(v) => {
            let n = int(v, "version", 0, i64::MAX)?;
            if n == FORMAT_VERSION {
                Ok(())
            } else {
                Err(invalid(
                    "version",
                    format!(
                        "format version {n} is not supported (this atlas-init reads version {FORMAT_VERSION}); rebuild the image with the same atlas-install that wrote the file"
                    ),
                ))
            }
        }
    }
}

struct Obj<'a> {
    path: String,
    fields: &'a [(String, Value)],
}

impl<'a> Obj<'a> {
    fn new(v: &'a Value, path: &str) -> Result<Self, SpecError> {
        match v {
            Value::Object(fields) => Ok(Obj {
                path: path.to_string(),
                fields,
            }),
            other => Err(invalid(
                path,
                format!("expected an object, found {}", other.kind()),
            )),
        }
    }

    fn field(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// Unknown keys are errors: a typo must not silently drop a setting.
    fn only(&self, allowed: &[&str]) -> Result<(), SpecError> {
        match self
            .fields
            .iter()
            .find(|(k, _)| !allowed.contains(&k.as_str()))
        {
            Some((k, _)) => Err(invalid(
                &self.field(k),
                format!("unknown field (known: {})", allowed.join(", ")),
            )),
            None => Ok(()),
        }
    }

    /// The value of `key`; `null` counts as absent.
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
            .filter(|v| **v != Value::Null)
    }

    fn opt_string(&self, key: &str) -> Result<Option<String>, SpecError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Str(s)) => Ok(Some(s.clone())),
            Some(other) => Err(invalid(
                &self.field(key),
                format!("expected a string, found {}", other.kind()),
            )),
        }
    }

    fn strings(&self, key: &str) -> Result<Vec<String>, SpecError> {
        self.get(key)
            .map_or(Ok(Vec::new()), |v| string_list(v, &self.field(key)))
    }

    fn array(&self, key: &str) -> Result<&'a [Value], SpecError> {
        match self.get(key) {
            None => Ok(&[]),
            Some(Value::Array(items)) => Ok(items),
            Some(other) => Err(invalid(
                &self.field(key),
                format!("expected an array, found {}", other.kind()),
            )),
        }
    }
}

fn string_list(v: &Value, path: &str) -> Result<Vec<String>, SpecError> {
    let Value::Array(items) = v else {
        return Err(invalid(
            path,
            format!("expected an array of strings, found {}", v.kind()),
        ));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| match item {
            Value::Str(s) => Ok(s.clone()),
            other => Err(invalid(
                &format!("{path}[{i}]"),
                format!("expected a string, found {}", other.kind()),
            )),
        })
        .collect()
}

fn int(v: &Value, path: &str, min: i64, max: i64) -> Result<i64, SpecError> {
    match v {
        Value::Int(n) if (min..=max).contains(n) => Ok(*n),
        Value::Int(n) => Err(invalid(path, format!("{n} is outside {min}..{max}"))),
        other => Err(invalid(
            path,
            format!("expected a whole number, found {}", other.kind()),
        )),
    }
}

fn parse_field<T: FromStr>(s: &str, path: &str, what: &str) -> Result<T, SpecError> {
    s.parse()
        .map_err(|_| invalid(path, format!("\"{s}\" is not {what}")))
}

fn no_nul(s: &str, path: &str) -> Result<(), SpecError> {
    if s.contains('\0') {
        Err(invalid(path, "contains a NUL byte"))
    } else {
        Ok(())
    }
}

fn str_array(items: &[String]) -> Value {
    Value::Array(items.iter().map(|s| Value::Str(s.clone())).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service() -> ServiceSpec {
        ServiceSpec {
            entrypoint: vec!["/bin/prometheus".into()],
            cmd: vec!["--config.file=/etc/prometheus/prometheus.yml".into()],
            env: vec![
                "PATH=/usr/bin:/bin".into(),
                "EMPTY=".into(),
                "WITH_EQ=a=b".into(),
            ],
            working_dir: Some("/prometheus".into()),
            user: Some("nobody".into()),
            stop_grace_period: 7,
        }
    }

    fn network() -> NetworkSpec {
        NetworkSpec {
            interfaces: vec![InterfaceSpec {
                ipv4: Some("10.50.0.12/24".parse().unwrap()),
                gateway4: Some("10.50.0.1".parse().unwrap()),
                ipv6: Some("fd00:50::c/64".parse().unwrap()),
                gateway6: Some("fe80::1".parse().unwrap()),
                mtu: Some(1450),
                ..InterfaceSpec::named("eth0")
            }],
            dns: vec!["10.50.0.1".parse().unwrap(), "fd00:50::1".parse().unwrap()],
            search: vec!["atlas.internal".into()],
            hosts: vec![HostEntry {
                ip: "10.50.0.10".parse().unwrap(),
                names: vec!["grafana".into(), "grafana.atlas.internal".into()],
            }],
        }
    }

    fn err_of(r: Result<impl fmt::Debug, SpecError>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn service_round_trips() {
        let s = service();
        let text = s.to_json().unwrap();
        assert_eq!(ServiceSpec::from_json(&text).unwrap(), s);
        assert_eq!(
            s.argv(),
            [
                "/bin/prometheus",
                "--config.file=/etc/prometheus/prometheus.yml"
            ]
        );
        assert_eq!(s.env_var("PATH"), Some("/usr/bin:/bin"));
        assert_eq!(s.env_var("WITH_EQ"), Some("a=b"));
        assert_eq!(s.env_var("PAT"), None);
    }

    #[test]
    fn compact_form_reads_back_and_commands_are_replaced_validated() {
        let s = service();
        let line = s.to_json_compact().unwrap();
        assert!(!line.contains('\n') && !line.contains(": "), "{line}");
        assert_eq!(ServiceSpec::from_json(&line).unwrap(), s);
        let wrapped = s
            .with_command(&["/entry.sh".into()], &["/bin/x".into(), "-y".into()])
            .unwrap();
        assert_eq!(wrapped.argv(), ["/entry.sh", "/bin/x", "-y"]);
        assert_eq!((wrapped.env, wrapped.user), (s.env.clone(), s.user.clone()));
        assert!(
            err_of(s.with_command(&[], &[])).contains("cmd: entrypoint and cmd are both empty")
        );
        assert!(err_of(s.with_command(&[], &["a\0b".into()])).contains("cmd[0]: contains a NUL"));
    }

    #[test]
    fn set_env_replaces_in_place_or_appends() {
        let mut s = service();
        s.set_env("PATH", "/opt/bin");
        s.set_env("NEW", "x=y");
        assert_eq!(s.env, ["PATH=/opt/bin", "EMPTY=", "WITH_EQ=a=b", "NEW=x=y"]);
        s.validate().unwrap();
    }

    #[test]
    fn service_minimal_file_takes_defaults() {
        let s = ServiceSpec::from_json(r#"{"cmd": ["/bin/true"]}"#).unwrap();
        assert_eq!(s.stop_grace_period, DEFAULT_STOP_GRACE_PERIOD);
        assert_eq!((s.user, s.working_dir, s.env.len()), (None, None, 0));
        let s = ServiceSpec::from_json(r#"{"cmd": ["/bin/true"], "user": null}"#).unwrap();
        assert_eq!(s.user, None);
    }

    #[test]
    fn service_errors_name_the_field() {
        for (text, want) in [
            (r#"{"cmd": []}"#, "cmd: entrypoint and cmd are both empty"),
            (
                r#"{"cmd": ["x"], "env": ["NOEQUALS"]}"#,
                "env[0]: \"NOEQUALS\" is not KEY=VALUE",
            ),
            (
                r#"{"cmd": ["x"], "env": ["A=1", "A=2"]}"#,
                "env[1]: A is set twice",
            ),
            (
                r#"{"cmd": ["x"], "working_dir": "rel"}"#,
                "working_dir: \"rel\" is not an absolute path",
            ),
            (
                r#"{"cmd": ["x"], "user": "a:b:c"}"#,
                "user: \"a:b:c\" is not one of",
            ),
            (r#"{"cmd": ["x"], "user": ":5"}"#, "user: \":5\""),
            (
                r#"{"cmd": ["x"], "stop_grace_period": -1}"#,
                "stop_grace_period: -1 is outside 0..3600",
            ),
            (
                r#"{"cmd": ["x"], "stop_grace_period": "10"}"#,
                "stop_grace_period: expected a whole number, found a string",
            ),
            (
                r#"{"cmd": "x"}"#,
                "cmd: expected an array of strings, found a string",
            ),
            (
                r#"{"cmd": ["x", 1]}"#,
                "cmd[1]: expected a string, found a number",
            ),
            (
                r#"{"cmd": ["x"], "workdir": "/"}"#,
                "workdir: unknown field (known: version, entrypoint",
            ),
            (
                r#"{"cmd": ["x"], "version": 2}"#,
                "version: format version 2 is not supported",
            ),
            (r#"["x"]"#, "expected an object, found an array"),
            ("{\"cmd\": [\"x\"],}", "not valid JSON: line 1, column 15"),
        ] {
            let got = err_of(ServiceSpec::from_json(text));
            assert!(got.contains(want), "{text}: got {got:?}, want {want:?}");
        }
    }

    #[test]
    fn invalid_specs_are_never_written() {
        let mut s = service();
        s.env.push("PATH=/other".into());
        assert!(err_of(s.to_json()).contains("PATH is set twice"));
        let mut n = network();
        n.interfaces[0].gateway4 = Some("10.51.0.1".parse().unwrap());
        assert!(err_of(n.to_json()).contains("10.51.0.1 is not inside 10.50.0.12/24"));
    }

    #[test]
    fn network_round_trips() {
        let n = network();
        assert_eq!(NetworkSpec::from_json(&n.to_json().unwrap()).unwrap(), n);
        let empty = NetworkSpec::default();
        assert_eq!(
            NetworkSpec::from_json(&empty.to_json().unwrap()).unwrap(),
            empty
        );
    }

    #[test]
    fn network_reads_the_documented_shape() {
        let text = r#"{
            "interfaces": [{"name": "eth0", "ipv4": "10.50.0.12/24", "gateway4": "10.50.0.1", "mtu": 1500}],
            "dns": ["10.50.0.1"],
            "search": ["atlas.internal"],
            "hosts": [["10.50.0.10", ["grafana"]], ["fd00::a", ["loki", "loki.atlas.internal"]]]
        }"#;
        let n = NetworkSpec::from_json(text).unwrap();
        assert_eq!(
            n.interfaces[0].ipv4,
            Some(Ipv4Cidr {
                addr: Ipv4Addr::new(10, 50, 0, 12),
                prefix: 24
            })
        );
        assert_eq!(n.interfaces[0].ipv6, None);
        assert_eq!(n.hosts[1].names, ["loki", "loki.atlas.internal"]);
    }

    #[test]
    fn network_errors_name_the_field() {
        let iface = |extra: &str| format!(r#"{{"interfaces": [{{"name": "eth0", {extra}}}]}}"#);
        for (text, want) in [
            (iface(r#""ipv4": "10.50.0.12""#), "interfaces[0].ipv4: \"10.50.0.12\" is not an IPv4 address with prefix"),
            (iface(r#""ipv4": "10.50.0.12/33""#), "interfaces[0].ipv4"),
            (iface(r#""ipv4": "10.50.0.12/+8""#), "interfaces[0].ipv4"),
            (iface(r#""gateway4": "10.50.0.1""#), "interfaces[0].gateway4: set without ipv4"),
            (iface(r#""ipv6": "fd00::c/64", "gateway6": "fd01::1""#), "interfaces[0].gateway6: fd01::1 is neither inside"),
            (iface(r#""ipv6": "fd00::c/64", "mtu": 1000"#), "interfaces[0].mtu: 1000 is outside 1280..65535"),
            (iface(r#""ipv4": "10.0.0.2/24", "dhcp": true"#), "interfaces[0].dhcp: unknown field"),
            (r#"{"interfaces": [{"ipv4": "10.0.0.2/24"}]}"#.into(), "interfaces[0].name: missing"),
            (r#"{"interfaces": [{"name": "lo"}]}"#.into(), "lo is brought up automatically"),
            (r#"{"interfaces": [{"name": "a-very-long-name0"}]}"#.into(), "not a valid interface name"),
            (r#"{"interfaces": [{"name": "eth0"}, {"name": "eth0"}]}"#.into(), "interfaces[1].name: eth0 is listed twice"),
            (
                r#"{"interfaces": [{"name": "eth0", "ipv4": "10.0.0.2/24", "gateway4": "10.0.0.1"}, {"name": "eth1", "ipv4": "10.1.0.2/24", "gateway4": "10.1.0.1"}]}"#.into(),
                "gateway4 is set on 2 interfaces",
            ),
            (r#"{"dns": ["8.8.8"]}"#.into(), "dns[0]: \"8.8.8\" is not an IP address"),
            (r#"{"search": ["bad domain"]}"#.into(), "search[0]: \"bad domain\" is not a host or domain name"),
            (r#"{"hosts": [["10.0.0.1", []]]}"#.into(), "hosts[0]: no names for this address"),
            (r#"{"hosts": [["10.0.0.1", "name"]]}"#.into(), "hosts[0][1]: expected an array of strings"),
            (r#"{"hosts": [{"ip": "10.0.0.1"}]}"#.into(), "hosts[0]: expected [\"IP\", [\"name\", ...]], found an object"),
        ] {
            let got = err_of(NetworkSpec::from_json(&text));
            assert!(got.contains(want), "{text}: got {got:?}, want {want:?}");
        }
    }

    #[test]
    fn cidr_membership() {
        let n: Ipv4Cidr = "10.50.0.12/24".parse().unwrap();
        assert!(n.contains("10.50.0.255".parse().unwrap()));
        assert!(!n.contains("10.50.1.1".parse().unwrap()));
        let all: Ipv4Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("192.0.2.1".parse().unwrap()));
        let v6: Ipv6Cidr = "fd00:50::c/64".parse().unwrap();
        assert!(v6.contains("fd00:50::1".parse().unwrap()));
        assert!(!v6.contains("fd00:51::1".parse().unwrap()));
    }

    #[test]
    fn renders_resolv_conf_and_hosts() {
        let n = network();
        assert_eq!(
            n.resolv_conf().unwrap(),
            "# Written by atlas-init from /etc/atlas/network.json\nnameserver 10.50.0.1\nnameserver fd00:50::1\nsearch atlas.internal\n"
        );
        assert_eq!(NetworkSpec::default().resolv_conf(), None);
        let hosts = n.hosts_file(Some("prometheus"));
        let lines: Vec<&str> = hosts.lines().skip(1).collect();
        assert_eq!(
            lines,
            [
                "127.0.0.1\tlocalhost",
                "::1\tlocalhost ip6-localhost ip6-loopback",
                "10.50.0.12\tprometheus",
                "fd00:50::c\tprometheus",
                "10.50.0.10\tgrafana grafana.atlas.internal",
            ]
        );
        assert!(!n.hosts_file(None).contains("prometheus"));
    }
}
