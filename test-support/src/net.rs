//! IPv4 ranges for a test's own bridges, chosen by looking at what the host uses (not by
//! hope), so tests pass beside the README demo or any other Atlas install, and two tests of
//! one process never get the same range.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::Mutex;

use ipnet::Ipv4Net;

/// Second octets the tests take their /24s from: far from the seed's defaults (10.10-10.50)
/// and from the 10.199 bridge tests/start-services.sh creates.
const SECOND_OCTETS: std::ops::RangeInclusive<u8> = 200..=254;

/// /24s handed out in this process: two tests running at once never get the same one.
static HANDED_OUT: Mutex<BTreeSet<Ipv4Net>> = Mutex::new(BTreeSet::new());

fn output(cmd: &mut Command) -> String {
    cmd.output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Every IPv4 range in use on this host: routes of the main table (the uplink's included,
/// the default route left out), addresses of every interface, and the ranges of every Incus
/// network.
pub fn ranges_in_use() -> Vec<Ipv4Net> {
    let routes = output(Command::new("ip").args(["-4", "-o", "route", "show"]));
    let mut used: Vec<Ipv4Net> = routes
        .lines()
        .filter_map(|l| {
            let dest = l.split_whitespace().next()?;
            dest.parse::<Ipv4Net>()
                .ok()
                .or_else(|| dest.parse::<Ipv4Addr>().ok().map(Ipv4Net::from))
        })
        .map(|n| n.trunc())
        .collect();
    let addrs = output(Command::new("ip").args(["-4", "-o", "addr", "show"]));
    used.extend(addrs.lines().filter_map(|l| {
        let mut f = l.split_whitespace();
        f.position(|w| w == "inet")?;
        f.next()?.parse::<Ipv4Net>().ok().map(|n| n.trunc())
    }));
    let nets = crate::incus::incus(&["query", "/1.0/networks?recursion=1"]);
    let nets: serde_json::Value = serde_json::from_slice(&nets.stdout).unwrap_or_default();
    used.extend(
        nets.as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| {
                n["config"]["ipv4.address"]
                    .as_str()?
                    .parse::<Ipv4Net>()
                    .ok()
            })
            .map(|n| n.trunc()),
    );
    used
}

fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// `n` /24s (as gateway `.1/24`) that clash with nothing on this host and were not handed to
/// another test of this process. The search starts at a place derived from the process id,
/// so concurrent test processes rarely even look at the same ranges.
pub fn free_subnets(n: usize) -> Vec<Ipv4Net> {
    let used = ranges_in_use();
    let mut handed = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let seconds: Vec<u8> = SECOND_OCTETS.collect();
    let start = std::process::id() as usize;
    let mut out = Vec::new();
    for k in 0..seconds.len() * 256 {
        let i = (start + k * 7) % (seconds.len() * 256);
        let (second, third) = (seconds[i / 256], (i % 256) as u8);
        let net = Ipv4Net::new(Ipv4Addr::new(10, second, third, 0), 24).expect("a /24");
        if handed.contains(&net) || used.iter().any(|u| overlaps(u, &net)) {
            continue;
        }
        handed.insert(net);
        out.push(Ipv4Net::new(Ipv4Addr::new(10, second, third, 1), 24).expect("a /24"));
        if out.len() == n {
            return out;
        }
    }
    panic!("no {n} free /24s in 10.{SECOND_OCTETS:?}.0.0 on this host");
}
