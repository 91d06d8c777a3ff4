//! Write a tokenwatch detector plugin in safe Rust.
//!
//! Implement [`Detector`] and invoke [`export_detector!`] once; build the crate
//! as a `cdylib` and drop the `.so` into the server's plugin folder. The SDK
//! produces the `tokenwatch_detector_v1` entry symbol and the C-ABI shims of
//! `detector-api`: it checks every pointer, validates sizes, catches every
//! panic (a panic becomes an error return plus a `last_error` text, it never
//! unwinds into the host) and reports `Err` values the same way.
//!
//! ```
//! use detector_sdk::{Alert, Alerts, Batch, Detector, Severity};
//!
//! /// Raises an alert for every refused token signed with `none`.
//! struct AlgNone;
//!
//! impl Detector for AlgNone {
//!     fn new(_config_json: &str) -> detector_sdk::Result<Self> {
//!         Ok(AlgNone)
//!     }
//!     fn process(&mut self, batch: &Batch<'_>, out: &mut Alerts<'_>) -> detector_sdk::Result {
//!         for ev in batch {
//!             if ev.alg() == Some("none") {
//!                 out.emit(&Alert {
//!                     rule: "alg-none",
//!                     severity: Severity::High,
//!                     subject: ev.subject(),
//!                     client_ip: ev.client_ip(),
//!                     summary: "token with alg=none presented",
//!                     group_key: ev.client_ip().unwrap_or("-"),
//!                     evidence: &[ev.id()],
//!                 })?;
//!             }
//!         }
//!         Ok(())
//!     }
//! }
//!
//! detector_sdk::export_detector!(AlgNone, "alg-none", "0.1.0", "tokens signed with alg=none");
//!
//! // Plain-Rust unit test of the same detector, no FFI involved:
//! use detector_sdk::testing::{run_batch, EventData};
//! let mut d = AlgNone::new("{}").unwrap();
//! let ev = EventData { id: 7, alg: Some("none".into()), ..EventData::default() };
//! let alerts = run_batch(&mut d, &[ev]).unwrap();
//! assert_eq!(alerts[0].evidence, vec![7]);
//! ```
//!
//! Lifetimes: an [`Event`] borrows host memory that is only valid during
//! `process`; the borrow checker enforces that. Copy (`to_owned`) what you keep.
//!
//! Build plugins with the default `panic = "unwind"`; with `panic = "abort"`
//! the SDK cannot catch a panic and a bug in the plugin ends the server.

use core::ffi::c_void;
use core::marker::PhantomData;
use std::fmt;

pub use detector_api as api;
use detector_api::{
    AlertView, EventBatch, EventView, HostContext, StrView, ALERT_VIEW_V1_SIZE, EVENT_VIEW_V1_SIZE,
    HOST_CONTEXT_V1_SIZE, STATUS_OK,
};

/// Any error a detector returns; its `Display` text becomes `last_error`.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// Result alias for detector methods.
pub type Result<T = (), E = Error> = core::result::Result<T, E>;

/// A detector: state built from a JSON config, fed batches of audit events.
///
/// The host calls one instance from one thread at a time (not always the
/// same thread), so `&mut self` is all the synchronisation needed. The type
/// must be `Send` because of that thread hopping.
pub trait Detector: Sized + Send + 'static {
    /// Build the detector from its JSON config (`{}` when none is set).
    /// An `Err` refuses the plugin with that message.
    fn new(config_json: &str) -> Result<Self>;

    /// Look at a batch of committed audit events, in commit order.
    fn process(&mut self, batch: &Batch<'_>, out: &mut Alerts<'_>) -> Result;

    /// Time has passed (`now_us`, microseconds since the Unix epoch): close
    /// windows and free memory. The default does nothing.
    fn tick(&mut self, now_us: i64, out: &mut Alerts<'_>) -> Result {
        let _ = (now_us, out);
        Ok(())
    }
}

/// Shown in place of a string field that is not valid UTF-8. The host always
/// sends UTF-8, so this only appears if a host breaks the contract.
pub const INVALID_UTF8: &str = "\u{FFFD}";

/// # Safety
/// A non-NULL view must point to `len` bytes valid for `'a`.
unsafe fn text<'a>(view: StrView) -> Option<&'a str> {
    // SAFETY: forwarded from the caller.
    let bytes = unsafe { view.as_bytes() }?;
    Some(std::str::from_utf8(bytes).unwrap_or(INVALID_UTF8))
}

/// One audit event, borrowed from the host for the duration of `process`.
///
/// Strings are checked for UTF-8 when read, so reading only the fields a
/// detector needs costs only those fields.
#[derive(Clone, Copy)]
pub struct Event<'a> {
    view: &'a EventView,
}

macro_rules! optional_fields {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {$(
        $(#[$doc])*
        pub fn $name(&self) -> Option<&'a str> {
            // SAFETY: the Batch this event came from guarantees its views (and
            // the bytes they point at) are valid for 'a.
            unsafe { text(self.view.$name) }
        }
    )*};
}

impl<'a> Event<'a> {
    /// Audit row id; use it as alert evidence.
    pub fn id(&self) -> i64 {
        self.view.id
    }

    /// Event time in microseconds since the Unix epoch (UTC).
    pub fn time_us(&self) -> i64 {
        self.view.time_us
    }

    /// Dotted event kind, e.g. `auth.login.failure`.
    pub fn kind(&self) -> &'a str {
        // SAFETY: as in optional_fields.
        unsafe { text(self.view.kind) }.unwrap_or("")
    }

    /// `success` or `failure`.
    pub fn outcome(&self) -> &'a str {
        // SAFETY: as in optional_fields.
        unsafe { text(self.view.outcome) }.unwrap_or("")
    }

    /// Where the event came from.
    pub fn source(&self) -> &'a str {
        // SAFETY: as in optional_fields.
        unsafe { text(self.view.source) }.unwrap_or("")
    }

    /// True when `outcome` is `failure`.
    pub fn is_failure(&self) -> bool {
        self.outcome() == "failure"
    }

    optional_fields!(
        /// Rejection reason code, e.g. `bad_signature`.
        reason,
        /// Token subject.
        subject,
        /// Login name.
        username,
        /// Client IP address.
        client_ip,
        /// HTTP User-Agent.
        user_agent,
        /// HTTP method.
        method,
        /// HTTP path.
        path,
        /// Token id.
        jti,
        /// Key id of the token's header.
        kid,
        /// Algorithm of the token's header.
        alg,
        /// Token fingerprint.
        token_fp,
    );
}

impl fmt::Debug for Event<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("id", &self.id())
            .field("time_us", &self.time_us())
            .field("kind", &self.kind())
            .field("outcome", &self.outcome())
            .field("client_ip", &self.client_ip())
            .finish_non_exhaustive()
    }
}

/// A batch of events, valid for `'a` (the duration of the `process` call).
pub struct Batch<'a> {
    base: *const u8,
    len: usize,
    stride: usize,
    _events: PhantomData<&'a EventView>,
}

impl<'a> Batch<'a> {
    /// A batch over a slice of views.
    ///
    /// # Safety
    /// Every non-NULL string pointer in `views` must point to that many bytes
    /// valid for `'a`.
    pub unsafe fn from_views(views: &'a [EventView]) -> Batch<'a> {
        Batch {
            base: views.as_ptr().cast(),
            len: views.len(),
            stride: core::mem::size_of::<EventView>(),
            _events: PhantomData,
        }
    }

    /// Number of events.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the batch holds no event.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Event `i`, or `None` past the end.
    pub fn get(&self, i: usize) -> Option<Event<'a>> {
        if i >= self.len {
            return None;
        }
        // SAFETY: i < len, and the constructor guarantees `len` events at
        // `stride` bytes apart, each at least EVENT_VIEW_V1_SIZE long and
        // aligned for EventView (checked in the FFI shim).
        let view = unsafe { &*self.base.add(i * self.stride).cast::<EventView>() };
        Some(Event { view })
    }

    /// The events in order.
    pub fn iter(&self) -> BatchIter<'a, '_> {
        self.into_iter()
    }
}

impl<'a, 'b> IntoIterator for &'b Batch<'a> {
    type Item = Event<'a>;
    type IntoIter = BatchIter<'a, 'b>;
    fn into_iter(self) -> BatchIter<'a, 'b> {
        BatchIter {
            batch: self,
            next: 0,
        }
    }
}

/// Iterator over a [`Batch`].
pub struct BatchIter<'a, 'b> {
    batch: &'b Batch<'a>,
    next: usize,
}

impl<'a> Iterator for BatchIter<'a, '_> {
    type Item = Event<'a>;
    fn next(&mut self) -> Option<Event<'a>> {
        let ev = self.batch.get(self.next)?;
        self.next += 1;
        Some(ev)
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.batch.len - self.next;
        (n, Some(n))
    }
}

impl ExactSizeIterator for BatchIter<'_, '_> {}

/// How bad an alert is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// Worth a look.
    Low,
    /// Probably an attack attempt.
    Medium,
    /// An attack in progress.
    High,
    /// A likely compromise.
    Critical,
}

impl Severity {
    /// The ABI value (`SEVERITY_*`).
    pub fn to_raw(self) -> u32 {
        match self {
            Severity::Low => api::SEVERITY_LOW,
            Severity::Medium => api::SEVERITY_MEDIUM,
            Severity::High => api::SEVERITY_HIGH,
            Severity::Critical => api::SEVERITY_CRITICAL,
        }
    }
}

/// An alert to raise; the host copies it, so borrowing is fine.
#[derive(Clone, Copy, Debug)]
pub struct Alert<'a> {
    /// Rule identifier within the plugin.
    pub rule: &'a str,
    /// How bad it is.
    pub severity: Severity,
    /// Subject the alert is about.
    pub subject: Option<&'a str>,
    /// Client IP the alert is about.
    pub client_ip: Option<&'a str>,
    /// One human-readable line. Never put a token or secret here.
    pub summary: &'a str,
    /// Key under which repeated alerts are grouped.
    pub group_key: &'a str,
    /// Audit event ids that support the alert.
    pub evidence: &'a [i64],
}

/// The host refused an alert (e.g. over its size limits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmitError;

impl fmt::Display for EmitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the host refused the alert (see the host log for the reason)")
    }
}

impl std::error::Error for EmitError {}

enum Sink<'a> {
    Host(&'a HostContext),
    Local(&'a mut Vec<testing::AlertData>),
}

/// Where a detector raises alerts during `process` or `tick`.
pub struct Alerts<'a> {
    sink: Sink<'a>,
}

impl Alerts<'_> {
    /// Raise an alert. The host copies it before this returns.
    pub fn emit(&mut self, alert: &Alert<'_>) -> Result<(), EmitError> {
        match &mut self.sink {
            Sink::Host(ctx) => {
                let view = AlertView {
                    struct_size: core::mem::size_of::<AlertView>(),
                    severity: alert.severity.to_raw(),
                    reserved: 0,
                    rule: StrView::new(alert.rule),
                    subject: StrView::from_opt(alert.subject),
                    client_ip: StrView::from_opt(alert.client_ip),
                    summary: StrView::new(alert.summary),
                    group_key: StrView::new(alert.group_key),
                    evidence: alert.evidence.as_ptr(),
                    evidence_len: alert.evidence.len(),
                };
                let Some(emit) = ctx.emit_alert else {
                    return Err(EmitError);
                };
                // SAFETY: ctx was checked in the shim (non-NULL, large enough);
                // `view` and everything it points to outlive the call.
                let status = unsafe { emit(*ctx, &view) };
                if status == STATUS_OK {
                    Ok(())
                } else {
                    Err(EmitError)
                }
            }
            Sink::Local(out) => {
                out.push(testing::AlertData::from_alert(alert));
                Ok(())
            }
        }
    }
}

/// Run a detector without FFI: for plugin unit tests and baselines.
pub mod testing {
    use super::*;

    pub mod traffic;

    /// An owned audit event, to build batches in tests.
    #[derive(Clone, Debug, Default, PartialEq, Eq)]
    pub struct EventData {
        /// Audit row id.
        pub id: i64,
        /// Microseconds since the epoch.
        pub time_us: i64,
        /// Dotted kind.
        pub kind: String,
        /// `success` or `failure`.
        pub outcome: String,
        /// Reason code.
        pub reason: Option<String>,
        /// Subject.
        pub subject: Option<String>,
        /// Login name.
        pub username: Option<String>,
        /// Client IP.
        pub client_ip: Option<String>,
        /// User-Agent.
        pub user_agent: Option<String>,
        /// HTTP method.
        pub method: Option<String>,
        /// HTTP path.
        pub path: Option<String>,
        /// Token id.
        pub jti: Option<String>,
        /// Key id.
        pub kid: Option<String>,
        /// Algorithm.
        pub alg: Option<String>,
        /// Token fingerprint.
        pub token_fp: Option<String>,
        /// Source.
        pub source: String,
    }

    impl EventData {
        /// A view borrowing this event's strings; valid while `self` is.
        pub fn view(&self) -> EventView {
            EventView {
                id: self.id,
                time_us: self.time_us,
                kind: StrView::new(&self.kind),
                outcome: StrView::new(&self.outcome),
                reason: StrView::from_opt(self.reason.as_deref()),
                subject: StrView::from_opt(self.subject.as_deref()),
                username: StrView::from_opt(self.username.as_deref()),
                client_ip: StrView::from_opt(self.client_ip.as_deref()),
                user_agent: StrView::from_opt(self.user_agent.as_deref()),
                method: StrView::from_opt(self.method.as_deref()),
                path: StrView::from_opt(self.path.as_deref()),
                jti: StrView::from_opt(self.jti.as_deref()),
                kid: StrView::from_opt(self.kid.as_deref()),
                alg: StrView::from_opt(self.alg.as_deref()),
                token_fp: StrView::from_opt(self.token_fp.as_deref()),
                source: StrView::new(&self.source),
            }
        }
    }

    /// Views over a slice of [`EventData`], from which [`Batch`]es are made.
    pub struct BatchBuf<'a> {
        views: Vec<EventView>,
        _events: PhantomData<&'a [EventData]>,
    }

    impl<'a> BatchBuf<'a> {
        /// Build the views once; reuse them for many `batch()` calls.
        pub fn new(events: &'a [EventData]) -> BatchBuf<'a> {
            BatchBuf {
                views: events.iter().map(EventData::view).collect(),
                _events: PhantomData,
            }
        }

        /// A batch over all the events.
        pub fn batch(&self) -> Batch<'_> {
            // SAFETY: every view borrows an EventData that outlives 'a, and
            // the batch cannot outlive `self`.
            unsafe { Batch::from_views(&self.views) }
        }
    }

    /// An owned copy of a raised alert.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct AlertData {
        /// Rule.
        pub rule: String,
        /// Severity.
        pub severity: Severity,
        /// Subject.
        pub subject: Option<String>,
        /// Client IP.
        pub client_ip: Option<String>,
        /// Summary line.
        pub summary: String,
        /// Group key.
        pub group_key: String,
        /// Evidence ids.
        pub evidence: Vec<i64>,
    }

    impl AlertData {
        pub(crate) fn from_alert(a: &Alert<'_>) -> AlertData {
            AlertData {
                rule: a.rule.to_owned(),
                severity: a.severity,
                subject: a.subject.map(str::to_owned),
                client_ip: a.client_ip.map(str::to_owned),
                summary: a.summary.to_owned(),
                group_key: a.group_key.to_owned(),
                evidence: a.evidence.to_vec(),
            }
        }
    }

    /// Collect alerts from a closure that raises them into an [`Alerts`].
    pub fn collect<R>(f: impl FnOnce(&mut Alerts<'_>) -> R) -> (R, Vec<AlertData>) {
        let mut out = Vec::new();
        let r = f(&mut Alerts {
            sink: Sink::Local(&mut out),
        });
        (r, out)
    }

    /// Feed one batch to a detector and return the alerts it raised.
    pub fn run_batch<D: Detector>(d: &mut D, events: &[EventData]) -> Result<Vec<AlertData>> {
        let buf = BatchBuf::new(events);
        let (r, alerts) = collect(|out| d.process(&buf.batch(), out));
        r.map(|()| alerts)
    }

    /// Tick a detector and return the alerts it raised.
    pub fn run_tick<D: Detector>(d: &mut D, now_us: i64) -> Result<Vec<AlertData>> {
        let (r, alerts) = collect(|out| d.tick(now_us, out));
        r.map(|()| alerts)
    }
}

/// Implementation details of [`export_detector!`]; not a stable API.
#[doc(hidden)]
pub mod __private {
    use super::*;
    use detector_api::{DetectorDescriptor, ErrorBuf, Status, ABI_MAJOR, ABI_MINOR, STATUS_ERROR};
    use std::any::Any;
    use std::panic::{catch_unwind, AssertUnwindSafe};

    /// Same rule the host enforces, checked at compile time by the macro.
    pub const fn valid_name(name: &str) -> bool {
        let b = name.as_bytes();
        if b.is_empty() || b.len() > 64 {
            return false;
        }
        let mut i = 0;
        while i < b.len() {
            let c = b[i];
            if !(c.is_ascii_alphanumeric() || c == b'_' || c == b'-' || c == b'.') {
                return false;
            }
            i += 1;
        }
        true
    }

    /// The static descriptor for detector type `D`.
    pub const fn descriptor<D: Detector>(
        name: &'static str,
        version: &'static str,
        description: &'static str,
    ) -> DetectorDescriptor {
        DetectorDescriptor {
            abi_major: ABI_MAJOR,
            abi_minor: ABI_MINOR,
            struct_size: core::mem::size_of::<DetectorDescriptor>(),
            name: StrView::from_static(name),
            version: StrView::from_static(version),
            description: StrView::from_static(description),
            create: Some(create::<D>),
            process: Some(process::<D>),
            tick: Some(tick::<D>),
            destroy: Some(destroy::<D>),
            last_error: Some(last_error::<D>),
        }
    }

    struct State<D> {
        detector: D,
        last_error: String,
    }

    fn panic_text(payload: &(dyn Any + Send)) -> String {
        let msg = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("non-string panic payload");
        format!("detector panicked: {msg}")
    }

    /// Copy as much of `msg` as fits into the host's buffer, on a char boundary.
    ///
    /// # Safety
    /// `err` is NULL or points to an ErrorBuf whose `ptr` has `cap` writable bytes.
    unsafe fn write_error(err: *mut ErrorBuf, msg: &str) {
        // SAFETY: forwarded from the caller.
        let Some(err) = (unsafe { err.as_mut() }) else {
            return;
        };
        if err.ptr.is_null() {
            return;
        }
        let mut n = msg.len().min(err.cap);
        while !msg.is_char_boundary(n) {
            n -= 1;
        }
        // SAFETY: the caller guarantees `cap` writable bytes; n <= cap and the
        // source is a distinct Rust string.
        unsafe { core::ptr::copy_nonoverlapping(msg.as_ptr(), err.ptr, n) };
        err.len = n;
    }

    /// # Safety
    /// Called by the host per the `create` contract in detector-api.
    pub unsafe extern "C" fn create<D: Detector>(
        config_json: StrView,
        out_state: *mut *mut c_void,
        err: *mut ErrorBuf,
    ) -> Status {
        if out_state.is_null() {
            // SAFETY: per contract.
            unsafe { write_error(err, "create: out_state is NULL") };
            return STATUS_ERROR;
        }
        // SAFETY: the host keeps the config bytes valid during create().
        let config = match unsafe { config_json.as_bytes() } {
            None => "{}",
            Some(bytes) => match std::str::from_utf8(bytes) {
                Ok(s) => s,
                Err(_) => {
                    // SAFETY: per contract.
                    unsafe { write_error(err, "config is not valid UTF-8") };
                    return STATUS_ERROR;
                }
            },
        };
        let message = match catch_unwind(|| D::new(config)) {
            Ok(Ok(detector)) => {
                let state = Box::new(State {
                    detector,
                    last_error: String::new(),
                });
                // SAFETY: out_state is non-NULL and writable per contract.
                unsafe { *out_state = Box::into_raw(state).cast() };
                return STATUS_OK;
            }
            Ok(Err(e)) => e.to_string(),
            Err(payload) => panic_text(&*payload),
        };
        // SAFETY: per contract.
        unsafe { write_error(err, &message) };
        STATUS_ERROR
    }

    /// Run `f` on the detector, turning `Err` and panics into STATUS_ERROR.
    ///
    /// # Safety
    /// `state` is NULL or was produced by `create::<D>` and not destroyed.
    unsafe fn call<D: Detector>(
        state: *mut c_void,
        f: impl FnOnce(&mut D) -> Result<(), String>,
    ) -> Status {
        // SAFETY: per the caller; the host never uses one state concurrently.
        let Some(state) = (unsafe { state.cast::<State<D>>().as_mut() }) else {
            return STATUS_ERROR;
        };
        // AssertUnwindSafe: after a panic the detector keeps running with
        // whatever state it had; the host disables it if panics repeat.
        match catch_unwind(AssertUnwindSafe(|| f(&mut state.detector))) {
            Ok(Ok(())) => STATUS_OK,
            Ok(Err(msg)) => {
                state.last_error = msg;
                STATUS_ERROR
            }
            Err(payload) => {
                state.last_error = panic_text(&*payload);
                STATUS_ERROR
            }
        }
    }

    /// # Safety
    /// `ctx` is NULL or valid for the call.
    unsafe fn check_ctx<'a>(ctx: *const HostContext) -> Result<&'a HostContext, String> {
        // SAFETY: per the caller.
        let ctx = unsafe { ctx.as_ref() }.ok_or("host context is NULL")?;
        if ctx.struct_size < HOST_CONTEXT_V1_SIZE || ctx.emit_alert.is_none() {
            return Err("host context is too small or has no emit_alert".into());
        }
        Ok(ctx)
    }

    /// # Safety
    /// Called by the host per the `process` contract in detector-api.
    pub unsafe extern "C" fn process<D: Detector>(
        state: *mut c_void,
        batch: *const EventBatch,
        ctx: *const HostContext,
    ) -> Status {
        // SAFETY: per contract, state came from create::<D>.
        unsafe {
            call::<D>(state, |d| {
                let ctx = check_ctx(ctx)?;
                let raw = batch.as_ref().ok_or("batch is NULL")?;
                if raw.len > 0 {
                    if raw.events.is_null() {
                        return Err("batch has events but a NULL pointer".into());
                    }
                    if raw.event_size < EVENT_VIEW_V1_SIZE
                        || !raw
                            .event_size
                            .is_multiple_of(core::mem::align_of::<EventView>())
                        || !raw.events.is_aligned()
                    {
                        return Err(format!("batch event_size {} is invalid", raw.event_size));
                    }
                }
                let batch = Batch {
                    base: raw.events.cast(),
                    len: raw.len,
                    stride: raw.event_size,
                    _events: PhantomData,
                };
                let mut out = Alerts {
                    sink: Sink::Host(ctx),
                };
                d.process(&batch, &mut out).map_err(|e| e.to_string())
            })
        }
    }

    /// # Safety
    /// Called by the host per the `tick` contract in detector-api.
    pub unsafe extern "C" fn tick<D: Detector>(
        state: *mut c_void,
        now_us: i64,
        ctx: *const HostContext,
    ) -> Status {
        // SAFETY: per contract, state came from create::<D>.
        unsafe {
            call::<D>(state, |d| {
                let ctx = check_ctx(ctx)?;
                let mut out = Alerts {
                    sink: Sink::Host(ctx),
                };
                d.tick(now_us, &mut out).map_err(|e| e.to_string())
            })
        }
    }

    /// # Safety
    /// Called by the host per the `destroy` contract in detector-api.
    pub unsafe extern "C" fn destroy<D: Detector>(state: *mut c_void) {
        if state.is_null() {
            return;
        }
        // SAFETY: produced by Box::into_raw in create::<D>, destroyed once.
        let state = unsafe { Box::from_raw(state.cast::<State<D>>()) };
        // A panicking Drop must not unwind into the host; what it leaks is
        // the price of not aborting the server.
        let _ = catch_unwind(AssertUnwindSafe(move || drop(state)));
    }

    /// # Safety
    /// Called by the host per the `last_error` contract in detector-api.
    pub unsafe extern "C" fn last_error<D: Detector>(state: *mut c_void) -> StrView {
        // SAFETY: per contract, state came from create::<D>.
        match unsafe { state.cast::<State<D>>().as_ref() } {
            Some(state) => StrView::new(&state.last_error),
            None => StrView::from_static("state is NULL"),
        }
    }

    /// Keeps `ALERT_VIEW_V1_SIZE` referenced: the SDK always sends the full
    /// current AlertView, never less than v1.
    const _: () = assert!(core::mem::size_of::<AlertView>() >= ALERT_VIEW_V1_SIZE);
}

/// Export a [`Detector`] as a tokenwatch plugin: produces the
/// `tokenwatch_detector_v1` entry symbol. Invoke exactly once per cdylib.
///
/// `export_detector!(Type, "name", "version", "description")`. The name must
/// be 1..=64 bytes of `[A-Za-z0-9_.-]` (checked at compile time) and unique
/// among the plugins a server loads.
#[macro_export]
macro_rules! export_detector {
    ($ty:ty, $name:expr, $version:expr, $description:expr $(,)?) => {
        const _: () = assert!(
            $crate::__private::valid_name($name),
            "detector name must be 1..=64 bytes of [A-Za-z0-9_.-]"
        );

        /// Entry symbol of this tokenwatch detector plugin.
        #[no_mangle]
        pub extern "C" fn tokenwatch_detector_v1() -> *const $crate::api::DetectorDescriptor {
            static DESCRIPTOR: $crate::api::DetectorDescriptor =
                $crate::__private::descriptor::<$ty>($name, $version, $description);
            &DESCRIPTOR
        }
    };
}
pub mod kit;
