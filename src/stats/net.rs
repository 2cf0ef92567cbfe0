//! A pod's interface counters, read from `/proc/<pid>/net/dev` of a process
//! in the pod's network namespace (its infra process). procfs answers for
//! the namespace of the process named, so no thread ever has to `setns`.

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InterfaceSample {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_errors: u64,
    pub rx_dropped: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
    pub tx_dropped: u64,
}

/// The interface the CRI reports as the pod's default, as containerd and
/// CRI-O name it.
pub const DEFAULT_INTERFACE: &str = "eth0";

/// Every interface but loopback in the network namespace of `pid`.
pub fn read(pid: i32) -> Option<Vec<InterfaceSample>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/net/dev")).ok()?;
    Some(parse_net_dev(&text).into_iter().filter(|i| i.name != "lo").collect())
}

/// Parse `/proc/net/dev`: two header lines, then
/// `name: rx_bytes packets errs drop fifo frame compressed multicast
/// tx_bytes packets errs drop fifo colls carrier compressed`.
pub fn parse_net_dev(text: &str) -> Vec<InterfaceSample> {
    text.lines()
        .skip(2)
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let v: Vec<u64> = rest.split_whitespace().filter_map(|n| n.parse().ok()).collect();
            (v.len() >= 16).then(|| InterfaceSample {
                name: name.trim().to_string(),
                rx_bytes: v[0],
                rx_packets: v[1],
                rx_errors: v[2],
                rx_dropped: v[3],
                tx_bytes: v[8],
                tx_packets: v[9],
                tx_errors: v[10],
                tx_dropped: v[11],
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_net_dev() {
        let text = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     840      10    0    0    0     0          0         0      840      10    0    0    0     0       0          0
  eth0: 1234567    890    1    2    0     0          0         0   765432     321    3    4    0     0       0          0
";
        let v = parse_net_dev(text);
        assert_eq!(v.len(), 2);
        assert_eq!(
            v[1],
            InterfaceSample {
                name: "eth0".into(),
                rx_bytes: 1_234_567,
                rx_packets: 890,
                rx_errors: 1,
                rx_dropped: 2,
                tx_bytes: 765_432,
                tx_packets: 321,
                tx_errors: 3,
                tx_dropped: 4,
            }
        );
        let mine = read(std::process::id() as i32).unwrap();
        assert!(mine.iter().all(|i| i.name != "lo"));
    }
}
