//! The collector's process seen from outside through /proc: which process listens on
//! the gRPC port, the CPU time it used, and its resident memory.

use std::path::Path;
use std::time::Duration;

/// Clock ticks per second of /proc/PID/stat's times: USER_HZ, which Linux fixes at 100
/// on every architecture it runs on today (alpha, the exception, is gone).
const USER_HZ: f64 = 100.0;
/// /proc/net/tcp's `st` for a listening socket (TCP_LISTEN in include/net/tcp_states.h).
const TCP_LISTEN: &str = "0A";

/// The process that owns the socket listening on TCP `port` (IPv4 or IPv6), found by the
/// socket's inode in /proc/net/tcp{,6} and the process's /proc/PID/fd links. `None` when
/// no process of this user holds it (another user's, or another network namespace's).
pub fn listening_on(port: u16) -> Option<u32> {
    let inodes: Vec<String> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|text| listening_inodes(&text, port))
        .collect();
    if inodes.is_empty() {
        return None;
    }
    let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    let me = std::process::id();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(link) = std::fs::read_link(fd.path())
                && wanted.iter().any(|w| Path::new(w) == link)
            {
                return Some(pid);
            }
        }
    }
    None
}

/// The inodes of the sockets listening on `port` in one /proc/net/tcp{,6} table.
fn listening_inodes(table: &str, port: u16) -> Vec<String> {
    let port = format!("{port:04X}");
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let local_port = cols.get(1)?.rsplit(':').next()?;
            (local_port == port && *cols.get(3)? == TCP_LISTEN).then(|| cols.get(9).copied())?
        })
        .filter(|inode| *inode != "0")
        .map(str::to_string)
        .collect()
}

/// CPU time (user + system) the process has used.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    cpu_time_of(&stat)
}

/// utime and stime are the 14th and 15th fields of /proc/PID/stat (proc(5)); the second
/// field, the command name in parentheses, may hold spaces, so count after its `)`.
fn cpu_time_of(stat: &str) -> Option<Duration> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_secs_f64((utime + stime) / USER_HZ))
}

/// Resident memory now (VmRSS) and the process's peak over its whole life (VmHWM), in MiB.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    pub rss_mib: f64,
    pub hwm_mib: f64,
}

pub fn memory(pid: u32) -> Option<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(Memory {
        rss_mib: status_kib(&status, "VmRSS:")? / 1024.0,
        hwm_mib: status_kib(&status, "VmHWM:")? / 1024.0,
    })
}

fn status_kib(status: &str, key: &str) -> Option<f64> {
    status
        .lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listening_socket_of_a_port_is_found_in_either_table() {
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
                  0: 0100007F:1D07 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0 100 0 0 10 0\n\
                  1: 0100007F:1D07 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 4343 1 0 100 0 0 10 0\n";
        assert_eq!(listening_inodes(v4, 7431), vec!["4242".to_string()]);
        assert!(listening_inodes(v4, 7432).is_empty());
        let v6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
                  0: 00000000000000000000000000000000:1D07 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 77 1 0 100 0 0 10 0\n";
        assert_eq!(listening_inodes(v6, 7431), vec!["77".to_string()]);
    }

    #[test]
    fn cpu_time_reads_past_a_name_with_spaces() {
        let stat =
            "123 (gpulse collector) S 1 123 123 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0 100 0 0";
        assert_eq!(cpu_time_of(stat), Some(Duration::from_secs(3)));
    }

    #[test]
    fn this_process_is_measured_and_its_listener_found() {
        assert!(cpu_time(std::process::id()).is_some());
        let m = memory(std::process::id()).unwrap();
        assert!(m.rss_mib > 0.0 && m.hwm_mib >= m.rss_mib);
        // A listener of this process: found only when the search may include it, so
        // look from a child's point of view by checking the table alone.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let tables = std::fs::read_to_string("/proc/net/tcp").unwrap();
        assert_eq!(listening_inodes(&tables, port).len(), 1);
    }
}
