//! Opt-in real-time hygiene for the session's threads (issue 16): SCHED_FIFO for the loop,
//! the emitter and ingest, CPU affinity, and `mlockall` once at session start. Nothing here
//! fails a run: what the kernel refuses (no CAP_SYS_NICE, no rtprio limit, no memlock limit)
//! is said once on stderr and kept for the session report ([`ThreadSetup::grants`]).
//!
//! All of it happens at thread start; nothing is touched per bin.

use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};

/// The `[realtime]` section of a rig file. The default turns everything off.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RealtimeConfig {
    /// 0: off. Otherwise the SCHED_FIFO priority (1..=98) of the loop and the emitter; ingest
    /// runs one below it (at 1 at the least), so the loop preempts it.
    pub priority: u8,
    /// CPU affinity of the real-time threads (each < 1024 and online); empty: no pinning.
    pub cpus: Vec<usize>,
    /// `mlockall(MCL_CURRENT | MCL_FUTURE)` once at session start: no page fault on the hot path.
    pub lock_memory: bool,
}

/// The largest SCHED_FIFO priority a rig may ask for (99 is left to the kernel's watchdog
/// and migration threads).
pub const MAX_PRIORITY: u8 = 98;

/// CPUs a `cpu_set_t` can name.
const CPU_SET_SIZE: usize = 1024;

impl RealtimeConfig {
    /// Checks the section against this machine (messages name the key, as the rig file has it).
    pub fn validate(&self) -> Result<(), String> {
        if self.priority > MAX_PRIORITY {
            return Err(format!(
                "[realtime] priority = {}: out of range: 0 turns real-time scheduling off, 1..={MAX_PRIORITY} is the SCHED_FIFO \
                 priority of the loop and the emitter (ingest gets one less; 99 is left to the kernel's own threads)",
                self.priority
            ));
        }
        let online = cpus_online();
        for (i, &cpu) in self.cpus.iter().enumerate() {
            if cpu >= CPU_SET_SIZE {
                return Err(format!(
                    "[realtime] cpus = {:?}: CPU {cpu} is beyond what a CPU set can name (0..={})",
                    self.cpus,
                    CPU_SET_SIZE - 1
                ));
            }
            if cpu >= online {
                return Err(format!(
                    "[realtime] cpus = {:?}: CPU {cpu} is not online: this machine has {online} CPU{} online (0..={})",
                    self.cpus,
                    if online == 1 { "" } else { "s" },
                    online.saturating_sub(1)
                ));
            }
            if self.cpus[..i].contains(&cpu) {
                return Err(format!("[realtime] cpus = {:?}: CPU {cpu} is listed twice", self.cpus));
            }
        }
        Ok(())
    }

    /// The SCHED_FIFO priority of a role's thread (0: normal scheduling).
    pub fn priority_of(&self, role: Role) -> u8 {
        match (self.priority, role) {
            (0, _) => 0,
            (p, Role::Ingest) => p.saturating_sub(1).max(1),
            (p, Role::Loop | Role::Emitter) => p,
        }
    }
}

/// CPUs online (`sysconf(_SC_NPROCESSORS_ONLN)`; 1 if it cannot say).
fn cpus_online() -> usize {
    // SAFETY: sysconf reads a system value and has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    if n > 0 {
        n as usize
    } else {
        1
    }
}

/// The session threads that get real-time treatment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The per-bin loop thread (src/runloop).
    Loop,
    /// The emitter (src/emit.rs).
    Emitter,
    /// The LSL ingest thread (src/ingest).
    Ingest,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Loop => "loop",
            Role::Emitter => "emitter",
            Role::Ingest => "ingest",
        }
    }
}

/// Applies a [`RealtimeConfig`] to the threads of a session and keeps what was granted and
/// refused. Cheap to clone (the record is shared); its mutex is taken only at thread start.
#[derive(Debug, Clone, Default)]
pub struct ThreadSetup {
    cfg: RealtimeConfig,
    grants: Arc<Mutex<Vec<String>>>,
}

impl ThreadSetup {
    pub fn new(cfg: RealtimeConfig) -> ThreadSetup {
        ThreadSetup { cfg, grants: Arc::default() }
    }

    /// The configuration it applies.
    pub fn config(&self) -> &RealtimeConfig {
        &self.cfg
    }

    /// If configured: `mlockall(MCL_CURRENT | MCL_FUTURE)`, once, at session start.
    pub fn lock_memory(&self) {
        if !self.cfg.lock_memory {
            return;
        }
        // SAFETY: mlockall takes flags only; it changes no memory, only whether it is resident.
        let rc = unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE) };
        let result = if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0)) };
        self.record(mlockall_line(result));
    }

    /// Called at the top of a session thread: SCHED_FIFO (if `priority` > 0) and CPU affinity
    /// (if `cpus` is not empty) for the calling thread. Never fails; each outcome is one
    /// line on stderr and in [`ThreadSetup::grants`]. With the default config: nothing.
    pub fn apply(&self, role: Role) {
        let priority = self.cfg.priority_of(role);
        if priority > 0 {
            let param = libc::sched_param { sched_priority: priority as libc::c_int };
            // SAFETY: pthread_self() is the calling thread, alive for the call; `param` is a
            // valid sched_param. The return value is an error number.
            let rc = unsafe { libc::pthread_setschedparam(libc::pthread_self(), libc::SCHED_FIFO, &param) };
            self.record(fifo_line(role, priority, if rc == 0 { Ok(()) } else { Err(rc) }));
        }
        if !self.cfg.cpus.is_empty() {
            let line = match self.cfg.cpus.iter().find(|&&c| c >= CPU_SET_SIZE) {
                Some(c) => {
                    format!("{}: pinning to CPUs {:?} refused (CPU {c} is beyond what a CPU set can name)", role.name(), self.cfg.cpus)
                }
                None => {
                    // SAFETY: cpu_set_t is plain data, all-zero is the empty set; every CPU is
                    // < CPU_SETSIZE (checked above); pid 0 is the calling thread.
                    let rc = unsafe {
                        let mut set: libc::cpu_set_t = std::mem::zeroed();
                        for &c in &self.cfg.cpus {
                            libc::CPU_SET(c, &mut set);
                        }
                        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
                    };
                    let result = if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0)) };
                    affinity_line(role, &self.cfg.cpus, result)
                }
            };
            self.record(line);
        }
    }

    /// What was granted and refused so far, in order (for the session report).
    pub fn grants(&self) -> Vec<String> {
        self.grants.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn record(&self, line: String) {
        eprintln!("[neuroloop] realtime: {line}");
        self.grants.lock().unwrap_or_else(|e| e.into_inner()).push(line);
    }
}

/// "EPERM" and the like, for the common errors here.
fn errno_name(e: i32) -> String {
    match e {
        libc::EPERM => "EPERM".into(),
        libc::EINVAL => "EINVAL".into(),
        libc::ENOMEM => "ENOMEM".into(),
        libc::ESRCH => "ESRCH".into(),
        libc::EAGAIN => "EAGAIN".into(),
        _ => format!("errno {e}"),
    }
}

fn fifo_line(role: Role, priority: u8, result: Result<(), i32>) -> String {
    let r = role.name();
    match result {
        Ok(()) => format!("{r}: SCHED_FIFO {priority} granted"),
        Err(libc::EPERM) => {
            format!("{r}: SCHED_FIFO {priority} refused (EPERM); run with CAP_SYS_NICE or an rtprio limit (/etc/security/limits.conf)")
        }
        Err(e) => format!("{r}: SCHED_FIFO {priority} refused ({}: {})", errno_name(e), std::io::Error::from_raw_os_error(e)),
    }
}

fn affinity_line(role: Role, cpus: &[usize], result: Result<(), i32>) -> String {
    let r = role.name();
    match result {
        Ok(()) => format!("{r}: pinned to CPUs {cpus:?}"),
        Err(libc::EINVAL) => {
            format!("{r}: pinning to CPUs {cpus:?} refused (EINVAL): none of them is online or allowed to this process (its cgroup cpuset)")
        }
        Err(e) => format!("{r}: pinning to CPUs {cpus:?} refused ({}: {})", errno_name(e), std::io::Error::from_raw_os_error(e)),
    }
}

fn mlockall_line(result: Result<(), i32>) -> String {
    match result {
        Ok(()) => "mlockall: granted".into(),
        Err(libc::EPERM) => "mlockall: refused (EPERM: not allowed to lock memory; raise RLIMIT_MEMLOCK or run with CAP_IPC_LOCK)".into(),
        Err(libc::ENOMEM) => {
            "mlockall: refused (ENOMEM: the process needs more than RLIMIT_MEMLOCK allows; raise RLIMIT_MEMLOCK (ulimit -l, \
             /etc/security/limits.conf) or run with CAP_IPC_LOCK)"
                .into()
        }
        Err(e) => format!("mlockall: refused ({}: {})", errno_name(e), std::io::Error::from_raw_os_error(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CPUs the calling thread may run on.
    fn affinity() -> Vec<usize> {
        // SAFETY: an all-zero cpu_set_t is valid; pid 0 is the calling thread.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            assert_eq!(libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set), 0);
            (0..CPU_SET_SIZE).filter(|&c| libc::CPU_ISSET(c, &set)).collect()
        }
    }

    #[test]
    fn validate_names_the_key() {
        assert_eq!(RealtimeConfig::default().validate(), Ok(()));
        assert_eq!(RealtimeConfig { priority: 98, cpus: vec![0], lock_memory: true }.validate(), Ok(()));
        let e = RealtimeConfig { priority: 99, ..Default::default() }.validate().unwrap_err();
        assert!(e.starts_with("[realtime] priority = 99:"), "{e}");
        let e = RealtimeConfig { cpus: vec![0, 1024], ..Default::default() }.validate().unwrap_err();
        assert!(e.starts_with("[realtime] cpus = [0, 1024]: CPU 1024"), "{e}");
        let online = cpus_online();
        let e = RealtimeConfig { cpus: vec![online], ..Default::default() }.validate().unwrap_err();
        assert!(e.starts_with(&format!("[realtime] cpus = [{online}]: CPU {online} is not online")), "{e}");
        let e = RealtimeConfig { cpus: vec![0, 0], ..Default::default() }.validate().unwrap_err();
        assert!(e.starts_with("[realtime] cpus = [0, 0]: CPU 0 is listed twice"), "{e}");
    }

    #[test]
    fn config_reads_from_toml() {
        let c: RealtimeConfig = toml::from_str("priority = 80\ncpus = [1]\nlock_memory = true\n").unwrap();
        assert_eq!(c, RealtimeConfig { priority: 80, cpus: vec![1], lock_memory: true });
        assert_eq!(toml::from_str::<RealtimeConfig>("").unwrap(), RealtimeConfig::default());
        assert!(toml::from_str::<RealtimeConfig>("priorty = 80").is_err());
        assert!(toml::from_str::<RealtimeConfig>("priority = 300").is_err());
    }

    #[test]
    fn ingest_runs_one_below_the_loop() {
        let c = RealtimeConfig { priority: 80, ..Default::default() };
        assert_eq!((c.priority_of(Role::Loop), c.priority_of(Role::Emitter), c.priority_of(Role::Ingest)), (80, 80, 79));
        let c = RealtimeConfig { priority: 1, ..Default::default() };
        assert_eq!(c.priority_of(Role::Ingest), 1);
        assert_eq!(RealtimeConfig::default().priority_of(Role::Loop), 0);
    }

    #[test]
    fn default_config_does_nothing() {
        let setup = ThreadSetup::new(RealtimeConfig::default());
        let before = affinity();
        setup.lock_memory();
        for role in [Role::Loop, Role::Emitter, Role::Ingest] {
            setup.apply(role);
        }
        assert!(setup.grants().is_empty());
        assert_eq!(affinity(), before);
    }

    #[test]
    fn priority_is_granted_or_refused_once() {
        // In a thread of its own: if it is granted (root), only that thread is SCHED_FIFO.
        let setup = ThreadSetup::new(RealtimeConfig { priority: 80, ..Default::default() });
        let s = setup.clone();
        std::thread::spawn(move || s.apply(Role::Loop)).join().unwrap();
        let grants = setup.grants();
        assert_eq!(grants.len(), 1, "{grants:?}");
        assert!(grants[0].starts_with("loop: SCHED_FIFO 80 "), "{grants:?}");
        assert!(grants[0].contains("granted") || grants[0].contains("refused"), "{grants:?}");
    }

    #[test]
    fn affinity_needs_no_privilege() {
        // In a thread of its own, so that the test harness's thread is not pinned.
        let cpu = affinity()[0]; // CPU 0 unless this process may not run there
        let setup = ThreadSetup::new(RealtimeConfig { cpus: vec![cpu], ..Default::default() });
        let s = setup.clone();
        let pinned = std::thread::spawn(move || {
            s.apply(Role::Emitter);
            affinity()
        })
        .join()
        .unwrap();
        assert_eq!(pinned, vec![cpu]);
        assert_eq!(setup.grants(), vec![format!("emitter: pinned to CPUs [{cpu}]")], "the clone shares the record");
    }

    #[test]
    fn refusals_say_how_to_get_it() {
        let e = fifo_line(Role::Loop, 80, Err(libc::EPERM));
        assert_eq!(e, "loop: SCHED_FIFO 80 refused (EPERM); run with CAP_SYS_NICE or an rtprio limit (/etc/security/limits.conf)");
        assert!(fifo_line(Role::Ingest, 79, Err(libc::EINVAL)).starts_with("ingest: SCHED_FIFO 79 refused (EINVAL: "));
        assert_eq!(mlockall_line(Ok(())), "mlockall: granted");
        let e = mlockall_line(Err(libc::EPERM));
        assert!(e.starts_with("mlockall: refused (EPERM") && e.contains("RLIMIT_MEMLOCK") && e.contains("CAP_IPC_LOCK"), "{e}");
        let e = mlockall_line(Err(libc::ENOMEM));
        assert!(e.contains("RLIMIT_MEMLOCK") && e.contains("CAP_IPC_LOCK"), "{e}");
        assert!(affinity_line(Role::Loop, &[1], Err(libc::EINVAL)).starts_with("loop: pinning to CPUs [1] refused (EINVAL)"));
    }
}
