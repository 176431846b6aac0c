//! Which hooks tell TCP sockets apart inside a syscall, chosen by probing the running kernel.
//!
//! Production kernels differ: most have kprobes, some lack the sock tracepoints (Linux < 6.4),
//! lockdown refuses fentry. The agent tries each strategy in order of preference, keeps the first
//! whose programs attach, and reports every attempt.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TcpStrategy {
    /// `sock/sock_send_length` and `sock/sock_recv_length` (Linux ≥ 6.4): fire only for socket
    /// I/O and name the socket's family and protocol. Cheapest, and sees connections that
    /// predate the agent.
    SockTracepoints,
    /// kprobes on `tcp_sendmsg`/`tcp_recvmsg`: TCP by construction.
    Kprobes,
    /// Last resort: only fds seen in connect/accept are sockets; connections that predate the
    /// agent are missed.
    FdTracking,
}

impl TcpStrategy {
    pub const PREFERENCE: [TcpStrategy; 3] = [
        TcpStrategy::SockTracepoints,
        TcpStrategy::Kprobes,
        TcpStrategy::FdTracking,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TcpStrategy::SockTracepoints => "sock-tracepoints",
            TcpStrategy::Kprobes => "kprobes",
            TcpStrategy::FdTracking => "fd-tracking",
        }
    }

    /// Whether the eBPF side learns TCP inside the syscall (as opposed to from connect/accept).
    pub fn marks_in_syscall(self) -> bool {
        !matches!(self, TcpStrategy::FdTracking)
    }
}

/// One attempt to attach a strategy's programs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Attempt {
    pub strategy: TcpStrategy,
    /// `None` when it attached.
    pub error: Option<String>,
}

/// What the agent chose and why; logged at start and printed by `capture` on exit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StrategyReport {
    /// The hooks that see the syscalls' buffers.
    pub syscall_hooks: &'static str,
    pub tcp: Option<TcpStrategy>,
    pub attempts: Vec<Attempt>,
    /// Whether socket addresses come from `inet_sock_set_state` (else from procfs).
    pub addresses_from_kernel: bool,
    /// Programs attached.
    pub attached: Vec<String>,
    /// TLS plaintext: `Ok` with the number of TLS library files attached at start, or why the
    /// uprobes are not used.
    pub tls: Result<usize, String>,
}

impl StrategyReport {
    /// The first strategy that attached, in the order tried.
    pub fn choose(attempts: &[Attempt]) -> Option<TcpStrategy> {
        attempts
            .iter()
            .find(|a| a.error.is_none())
            .map(|a| a.strategy)
    }
}

impl std::fmt::Display for StrategyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "hooks: {}; TCP identified by: {}",
            self.syscall_hooks,
            self.tcp.map(TcpStrategy::as_str).unwrap_or("none")
        )?;
        for a in &self.attempts {
            if let Some(e) = &a.error {
                write!(f, "; {} refused ({e})", a.strategy.as_str())?;
            }
        }
        write!(
            f,
            "; addresses from {}",
            if self.addresses_from_kernel {
                "inet_sock_set_state"
            } else {
                "procfs"
            }
        )?;
        match &self.tls {
            Ok(n) => write!(f, "; TLS plaintext: uprobes on {n} TLS library file(s)"),
            Err(e) => write!(f, "; TLS plaintext off ({e})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(strategy: TcpStrategy, ok: bool) -> Attempt {
        Attempt {
            strategy,
            error: (!ok).then(|| "EPERM".to_string()),
        }
    }

    #[test]
    fn the_first_strategy_that_attached_wins() {
        let a = [attempt(TcpStrategy::SockTracepoints, true)];
        assert_eq!(
            StrategyReport::choose(&a),
            Some(TcpStrategy::SockTracepoints)
        );
        let a = [
            attempt(TcpStrategy::SockTracepoints, false),
            attempt(TcpStrategy::Kprobes, true),
        ];
        assert_eq!(StrategyReport::choose(&a), Some(TcpStrategy::Kprobes));
        let a = [
            attempt(TcpStrategy::SockTracepoints, false),
            attempt(TcpStrategy::Kprobes, false),
            attempt(TcpStrategy::FdTracking, true),
        ];
        assert_eq!(StrategyReport::choose(&a), Some(TcpStrategy::FdTracking));
        assert_eq!(
            StrategyReport::choose(&[attempt(TcpStrategy::Kprobes, false)]),
            None
        );
    }

    #[test]
    fn report_names_the_choice_and_every_refusal() {
        let r = StrategyReport {
            tls: Ok(1),
            syscall_hooks: "syscall tracepoints",
            tcp: Some(TcpStrategy::FdTracking),
            attempts: vec![
                attempt(TcpStrategy::SockTracepoints, false),
                attempt(TcpStrategy::FdTracking, true),
            ],
            addresses_from_kernel: false,
            attached: vec![],
        };
        let s = r.to_string();
        assert!(s.contains("TCP identified by: fd-tracking"), "{s}");
        assert!(s.contains("sock-tracepoints refused (EPERM)"), "{s}");
        assert!(s.contains("addresses from procfs"), "{s}");
        assert!(s.contains("uprobes on 1 TLS library file(s)"), "{s}");
        assert!(
            TcpStrategy::PREFERENCE
                .iter()
                .all(|s| s.marks_in_syscall() != (*s == TcpStrategy::FdTracking))
        );
    }
}
