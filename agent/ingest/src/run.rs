//! The running sources: what [`Ingest::apply`] starts, keeps and stops.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};

use ferry_rules::runtime::{EventSink, WriteDone, WriteHook};
use tokio::sync::mpsc;

use crate::coap::{CoapServer, CoapStats};
use crate::config::{CoapPlan, Plan};
use crate::modbus::{AlertFn, Device, DeviceStats, WriteRequest};

type WriteTable = BTreeMap<String, (BTreeSet<u16>, mpsc::Sender<WriteRequest>)>;

/// The running sources.
pub struct Ingest {
    sink: EventSink,
    alert: AlertFn,
    coap: Option<(CoapPlan, CoapServer)>,
    devices: BTreeMap<String, Device>,
    table: Arc<RwLock<WriteTable>>,
}

impl std::fmt::Debug for Ingest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingest")
            .field("coap", &self.coap.as_ref().map(|(p, _)| p.bind))
            .field("devices", &self.devices.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Counters of every source, for metrics.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub coap: Option<Arc<CoapStats>>,
    pub devices: Vec<(String, Arc<DeviceStats>)>,
}

impl Ingest {
    /// Nothing runs until [`Ingest::apply`].
    pub fn new(sink: EventSink, alert: AlertFn) -> Ingest {
        Ingest {
            sink,
            alert,
            coap: None,
            devices: BTreeMap::new(),
            table: Arc::default(),
        }
    }

    /// Makes `plan` what runs: devices whose settings did not change keep
    /// polling on their connection; changed ones restart; the CoAP server
    /// is rebound only when its settings changed. A CoAP address that
    /// cannot be bound is an error, and everything else is applied anyway.
    pub async fn apply(&mut self, plan: &Plan) -> std::io::Result<()> {
        self.devices
            .retain(|name, d| plan.devices.get(name) == Some(&d.plan));
        for (name, p) in &plan.devices {
            if !self.devices.contains_key(name) {
                let device = Device::start(p.clone(), self.sink.clone(), self.alert.clone());
                self.devices.insert(name.clone(), device);
            }
        }
        *self.table.write().unwrap_or_else(|p| p.into_inner()) = self
            .devices
            .iter()
            .map(|(n, d)| (n.clone(), (d.plan.writable.clone(), d.writes.clone())))
            .collect();
        if self.coap.as_ref().map(|(p, _)| p) != plan.coap.as_ref() {
            // The old socket is closed before the new one binds: the address
            // is often the same.
            self.coap = None;
            if let Some(p) = &plan.coap {
                let server = CoapServer::start(p, self.sink.clone()).await?;
                self.coap = Some((p.clone(), server));
            }
        }
        Ok(())
    }

    /// Where the CoAP server listens, if it runs.
    pub fn coap_addr(&self) -> Option<std::net::SocketAddr> {
        self.coap.as_ref().map(|(_, s)| s.local)
    }

    /// The hook the rule engine sends `modbus_write` actions to.
    pub fn writer(&self) -> Box<dyn WriteHook> {
        Box::new(Writer {
            table: self.table.clone(),
        })
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            coap: self.coap.as_ref().map(|(_, s)| s.stats.clone()),
            devices: self
                .devices
                .iter()
                .map(|(n, d)| (n.clone(), d.stats.clone()))
                .collect(),
        }
    }
}

/// Routes register writes to the device tasks, checking once more that the
/// register is writable (rule sets were checked when loaded).
struct Writer {
    table: Arc<RwLock<WriteTable>>,
}

impl WriteHook for Writer {
    fn write(&self, device: &str, register: u16, value: u16, done: WriteDone) {
        let table = self.table.read().unwrap_or_else(|p| p.into_inner());
        let Some((writable, tx)) = table.get(device) else {
            return done(Err(format!("no Modbus device {device} is configured")));
        };
        if !writable.contains(&register) {
            return done(Err(format!(
                "register {register} of {device} is not writable"
            )));
        }
        if let Err(e) = tx.try_send(WriteRequest {
            register,
            value,
            done,
        }) {
            let (why, request) = match e {
                mpsc::error::TrySendError::Full(r) => ("too many writes are waiting", r),
                mpsc::error::TrySendError::Closed(r) => ("the device has stopped", r),
            };
            (request.done)(Err(format!(
                "writing register {register} of {device}: {why}"
            )));
        }
    }
}
