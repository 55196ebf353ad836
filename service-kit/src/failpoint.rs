//! Named fail points for crash tests: `BILLPAY_FAILPOINTS=name,name` makes a process
//! stop at those points (it says so on stderr and then waits for ever), so a test can
//! kill it with SIGKILL exactly there. Only dev mode accepts the variable: a service
//! started without `--dev` refuses to run while it is set, so production never stops
//! at one.

use std::{io::Write as _, sync::OnceLock};

/// The environment variable naming the fail points a process stops at.
pub const FAILPOINTS_VAR: &str = "BILLPAY_FAILPOINTS";
/// What a process prints (on stderr) when it reaches a fail point, before the name.
pub const REACHED_PREFIX: &str = "FAILPOINT REACHED ";

fn armed() -> &'static [String] {
    static ARMED: OnceLock<Vec<String>> = OnceLock::new();
    ARMED.get_or_init(|| {
        std::env::var(FAILPOINTS_VAR)
            .map(|names| {
                names
                    .split(',')
                    .map(str::trim)
                    .filter(|name| !name.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    })
}

#[derive(Debug, thiserror::Error)]
#[error("{FAILPOINTS_VAR} is set, which only dev mode (--dev) allows: unset it")]
pub struct FailpointsOutsideDev;

/// Refuses fail points outside dev mode.
pub fn check_allowed(dev: bool) -> Result<(), FailpointsOutsideDev> {
    refuse_outside_dev(dev, std::env::var_os(FAILPOINTS_VAR).is_some())
}

fn refuse_outside_dev(dev: bool, armed: bool) -> Result<(), FailpointsOutsideDev> {
    if armed && !dev {
        return Err(FailpointsOutsideDev);
    }
    Ok(())
}

/// Stops here for ever when `name` is armed (the test then kills the process);
/// otherwise does nothing. The calling thread blocks, as a frozen process would.
pub fn failpoint(name: &str) {
    if armed().iter().any(|armed| armed == name) {
        let mut stderr = std::io::stderr();
        let _ = writeln!(stderr, "{REACHED_PREFIX}{name}");
        let _ = stderr.flush();
        loop {
            std::thread::park();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fail_points_are_refused_outside_dev_mode() {
        assert!(refuse_outside_dev(false, true).is_err());
        assert!(refuse_outside_dev(true, true).is_ok());
        assert!(refuse_outside_dev(false, false).is_ok());
    }

    #[test]
    fn an_unarmed_fail_point_does_nothing() {
        failpoint("no-such-point");
    }
}
