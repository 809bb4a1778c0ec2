//! kestrel-hil: the hardware-in-the-loop harness and its suites (`tests/tests/*.rs`).
//!
//! Every suite talks to a unit only through the link, with the same client library `kestrel monitor` uses
//! (`kestrel_host::monitor`), so what passes here is what an operator's host sees. The unit is either
//!
//! - **simulated** (default): the real firmware ([`kestrel_edge::runtime::Unit::start`]) started in-process from
//!   `boards/sim.toml`, with a synthetic 64×64 camera, fake pins ([`kestrel_edge::pins::FakeBoard`]), TCP on a free
//!   loopback port and a pseudo-terminal serial link, and a scripted scorer (the suites check links, journal and
//!   line I/O, not a model: [`ScriptedScorer`]); or
//! - **real**: `KESTREL_UNIT=tcp://HOST:PORT` and `KESTREL_UNIT_KEY=<key file>` point the same suites at a unit on
//!   the bench. Suites that need to drive pins or see the pty (triggered mode, reject timing, serial on a sim) say
//!   so and skip on a real unit; `KESTREL_UNIT_SERIAL=serial:///dev/ttyUSB0?baud=921600` enables the serial suite.
//!
//! [`Target`] hides which one a suite got. [`TcpProxy`] sits between client and unit and can cut every connection,
//! which is how a link drop is forced the same way on a sim and on real hardware.

mod proxy;
mod sim;

use std::time::Duration;

pub use kestrel_host::monitor::{
    ConnectOptions, Monitor, MonitorError, MonitorOptions, Session, UnitAddr, Update,
};
pub use kestrel_wire::{UnitKey, Verdict, PROTO_VERSION};
pub use proxy::TcpProxy;
pub use sim::{ScriptedScorer, SimOptions, SimUnit, THRESHOLD};

/// Environment variable naming a real unit (`tcp://HOST:PORT`).
pub const ENV_UNIT: &str = "KESTREL_UNIT";
/// Environment variable naming the real unit's key file.
pub const ENV_UNIT_KEY: &str = "KESTREL_UNIT_KEY";
/// Environment variable naming the real unit's serial port (`serial:///dev/ttyX?baud=N`).
pub const ENV_UNIT_SERIAL: &str = "KESTREL_UNIT_SERIAL";

/// Why the harness could not provide a unit.
#[derive(Debug, thiserror::Error)]
pub enum HilError {
    /// `KESTREL_UNIT` or `KESTREL_UNIT_SERIAL` does not parse.
    #[error("{var}: {source}")]
    Addr {
        /// The variable.
        var: &'static str,
        /// Why.
        source: kestrel_host::monitor::addr::AddrError,
    },
    /// `KESTREL_UNIT` is set but `KESTREL_UNIT_KEY` is not.
    #[error("{0}")]
    Key(String),
    /// The key file named by `KESTREL_UNIT_KEY` is missing or malformed.
    #[error(transparent)]
    KeyFile(#[from] kestrel_wire::KeyFileError),
    /// The simulated unit did not start (or stop) as the harness expected.
    #[error("simulated unit: {0}")]
    Sim(String),
    /// The simulated unit's firmware failed to start or stop cleanly.
    #[error("simulated unit failed")]
    Unit(#[from] kestrel_edge::EdgeError),
    /// `boards/sim.toml` does not load.
    #[error(transparent)]
    Board(#[from] kestrel_edge::board::BoardError),
    /// A harness socket failed.
    #[error("harness IO")]
    Io(#[from] std::io::Error),
}

/// The unit a suite runs against.
pub enum Target {
    /// The firmware in-process on the simulated board (boxed: it is much larger than the other variant).
    Sim(Box<SimUnit>),
    /// A unit reached over the network (`KESTREL_UNIT`).
    Real {
        /// Its TCP address.
        addr: UnitAddr,
        /// Its serial port, when `KESTREL_UNIT_SERIAL` is set.
        serial: Option<UnitAddr>,
        /// Its key.
        key: UnitKey,
    },
}

impl Target {
    /// A real unit when `KESTREL_UNIT` is set, else a simulated one started with `opts`.
    pub fn acquire(opts: SimOptions) -> Result<Target, HilError> {
        match std::env::var(ENV_UNIT) {
            Ok(text) => {
                let addr = text.parse().map_err(|source| HilError::Addr {
                    var: ENV_UNIT,
                    source,
                })?;
                let key_path = std::env::var(ENV_UNIT_KEY).map_err(|_| {
                    HilError::Key(format!(
                        "{ENV_UNIT} is set; set {ENV_UNIT_KEY} to its key file too"
                    ))
                })?;
                let key = kestrel_host::monitor::read_key_file(key_path.as_ref())?;
                let serial = match std::env::var(ENV_UNIT_SERIAL) {
                    Ok(s) => Some(s.parse().map_err(|source| HilError::Addr {
                        var: ENV_UNIT_SERIAL,
                        source,
                    })?),
                    Err(_) => None,
                };
                Ok(Target::Real { addr, serial, key })
            }
            Err(_) => Ok(Target::Sim(Box::new(SimUnit::start(opts)?))),
        }
    }

    /// The TCP address to talk to.
    pub fn tcp(&self) -> UnitAddr {
        match self {
            Target::Sim(s) => s.tcp(),
            Target::Real { addr, .. } => addr.clone(),
        }
    }

    /// The serial link, if there is one (the sim's pty, or `KESTREL_UNIT_SERIAL`).
    pub fn serial(&self) -> Option<UnitAddr> {
        match self {
            Target::Sim(s) => s.serial(),
            Target::Real { serial, .. } => serial.clone(),
        }
    }

    /// The unit key.
    pub fn key(&self) -> UnitKey {
        match self {
            Target::Sim(s) => s.key(),
            Target::Real { key, .. } => key.clone(),
        }
    }

    /// Client options with the unit key and a short handshake timeout.
    pub fn connect_options(&self) -> ConnectOptions {
        let mut o = ConnectOptions::new(self.key());
        o.handshake_timeout = Duration::from_secs(3);
        o
    }

    /// Monitor options for `addr` (fast status polling, quick reconnects).
    pub fn monitor_options(&self, addr: UnitAddr) -> MonitorOptions {
        let mut o = MonitorOptions::new(addr, self.connect_options());
        o.status_every = Duration::from_millis(200);
        o.reconnect_for = Duration::from_secs(5);
        o.silence_timeout = Duration::from_secs(2);
        o
    }

    /// The simulated unit, or `None` on real hardware (suites that need pins skip then).
    pub fn sim(&self) -> Option<&SimUnit> {
        match self {
            Target::Sim(s) => Some(s),
            Target::Real { .. } => None,
        }
    }
}

/// Next `n` verdicts from a monitor (other updates are skipped), failing after `within`.
pub async fn verdicts(
    m: &mut Monitor,
    n: usize,
    within: Duration,
) -> Result<Vec<(Verdict, bool)>, String> {
    let mut out = Vec::with_capacity(n);
    let deadline = tokio::time::Instant::now() + within;
    while out.len() < n {
        let u = tokio::time::timeout_at(deadline, m.next())
            .await
            .map_err(|_| format!("only {} of {n} verdicts within {within:?}", out.len()))?
            .map_err(|e| e.to_string())?;
        if let Update::Verdict { verdict, replayed } = u {
            out.push((verdict, replayed));
        }
    }
    Ok(out)
}
