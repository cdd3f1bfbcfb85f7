//! Which workload a process belongs to, from its /proc/PID/cgroup: a Kubernetes pod,
//! a container, a Slurm job, a systemd unit, or just the process.

use std::path::{Path, PathBuf};

use crate::health::WorkloadKind;

/// Reads workload attribution from a procfs tree (normally /proc; a fixture in tests).
#[derive(Debug, Clone)]
pub struct ProcReader {
    root: PathBuf,
}

impl Default for ProcReader {
    fn default() -> Self {
        ProcReader {
            root: PathBuf::from("/proc"),
        }
    }
}

impl ProcReader {
    pub fn new(root: impl Into<PathBuf>) -> ProcReader {
        ProcReader { root: root.into() }
    }

    /// The workload of `pid`; a process that is gone or hidden (another PID namespace)
    /// is attributed to itself with the name "pid <n>".
    pub fn workload(&self, pid: u32) -> (WorkloadKind, String) {
        let dir = self.root.join(pid.to_string());
        let cgroup = std::fs::read_to_string(dir.join("cgroup")).unwrap_or_default();
        if let Some(found) = classify_cgroup(&cgroup) {
            return found;
        }
        let comm = read_trimmed(&dir.join("comm"));
        (
            WorkloadKind::Process,
            if comm.is_empty() {
                format!("pid {pid}")
            } else {
                comm
            },
        )
    }
}

fn read_trimmed(path: &Path) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Classifies the content of a /proc/PID/cgroup file (cgroup v1 or v2).
pub fn classify_cgroup(content: &str) -> Option<(WorkloadKind, String)> {
    // Each line is "hierarchy-id:controllers:path"; v2 has one line "0::/path".
    let paths: Vec<&str> = content
        .lines()
        .filter_map(|l| l.splitn(3, ':').nth(2))
        .collect();
    for path in &paths {
        if let Some(uid) = pod_uid(path) {
            return Some((WorkloadKind::KubernetesPod, uid));
        }
    }
    for path in &paths {
        if let Some(job) = slurm_job(path) {
            return Some((WorkloadKind::SlurmJob, job));
        }
    }
    for path in &paths {
        if let Some(id) = container_id(path) {
            return Some((WorkloadKind::Container, id));
        }
    }
    for path in &paths {
        if let Some(unit) = systemd_unit(path) {
            return Some((WorkloadKind::SystemdUnit, unit));
        }
    }
    None
}

/// "/kubepods/burstable/pod<uid>/<ctr>" (cgroupfs driver) or
/// "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_with_underscores>.slice/..."
/// (systemd driver).
fn pod_uid(path: &str) -> Option<String> {
    if !path.contains("kubepods") {
        return None;
    }
    path.split('/').find_map(|part| {
        let rest = part.rsplit_once("pod").map(|(_, r)| r)?;
        let uid = rest
            .strip_suffix(".slice")
            .unwrap_or(rest)
            .replace('_', "-");
        (uid.len() == 36 && uid.chars().all(|c| c.is_ascii_hexdigit() || c == '-')).then_some(uid)
    })
}

/// "/slurm/uid_1000/job_4242/step_0/..." or "/system.slice/slurmstepd.scope/job_4242/...".
fn slurm_job(path: &str) -> Option<String> {
    if !path.contains("slurm") {
        return None;
    }
    path.split('/').find_map(|part| {
        let id = part.strip_prefix("job_")?;
        (!id.is_empty() && id.chars().all(|c| c.is_ascii_digit())).then(|| id.to_string())
    })
}

/// "/docker/<64 hex>", "docker-<64 hex>.scope", "cri-containerd-<id>.scope", "crio-<id>.scope",
/// "libpod-<id>.scope".
fn container_id(path: &str) -> Option<String> {
    let last = path.rsplit('/').find(|p| !p.is_empty())?;
    let id = [
        "docker-",
        "cri-containerd-",
        "crio-",
        "libpod-",
        "containerd-",
    ]
    .iter()
    .find_map(|prefix| last.strip_prefix(prefix))
    .map(|r| r.strip_suffix(".scope").unwrap_or(r))
    .or_else(|| path.contains("/docker/").then_some(last))?;
    (id.len() >= 12 && id.chars().all(|c| c.is_ascii_hexdigit())).then(|| id[..12].to_string())
}

/// "/system.slice/<unit>.service": a service, not a user session.
fn systemd_unit(path: &str) -> Option<String> {
    if path.starts_with("/user.slice") {
        return None;
    }
    path.split('/')
        .rev()
        .find(|p| p.ends_with(".service"))
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_pods_with_either_cgroup_driver() {
        let cgroupfs = "12:devices:/kubepods/burstable/pod8e1f2b3c-4d5e-6f70-8192-a3b4c5d6e7f8/0123456789abcdef0123456789abcdef\n";
        let systemd = "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod8e1f2b3c_4d5e_6f70_8192_a3b4c5d6e7f8.slice/cri-containerd-0123456789abcdef.scope\n";
        for content in [cgroupfs, systemd] {
            assert_eq!(
                classify_cgroup(content),
                Some((
                    WorkloadKind::KubernetesPod,
                    "8e1f2b3c-4d5e-6f70-8192-a3b4c5d6e7f8".into()
                )),
                "{content}"
            );
        }
    }

    #[test]
    fn containers_jobs_and_units() {
        assert_eq!(
            classify_cgroup(
                "0::/system.slice/docker-4f1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c.scope"
            ),
            Some((WorkloadKind::Container, "4f1c2d3e4f5a".into()))
        );
        assert_eq!(
            classify_cgroup("4:memory:/slurm/uid_1000/job_4242/step_0/task_0\n"),
            Some((WorkloadKind::SlurmJob, "4242".into()))
        );
        assert_eq!(
            classify_cgroup("0::/system.slice/triton-inference.service\n"),
            Some((WorkloadKind::SystemdUnit, "triton-inference.service".into()))
        );
        assert_eq!(
            classify_cgroup("0::/user.slice/user-1000.slice/session-3.scope\n"),
            None
        );
    }

    #[test]
    fn a_process_without_a_workload_is_named_by_its_command() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("77")).unwrap();
        std::fs::write(
            dir.path().join("77/cgroup"),
            "0::/user.slice/user-1000.slice/session-1.scope\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("77/comm"), "python3\n").unwrap();
        let reader = ProcReader::new(dir.path());
        assert_eq!(
            reader.workload(77),
            (WorkloadKind::Process, "python3".into())
        );
        assert_eq!(
            reader.workload(78),
            (WorkloadKind::Process, "pid 78".into())
        );
    }
}
