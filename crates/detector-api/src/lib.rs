//! The tokenwatch detector plugin ABI.
//!
//! A detector is a shared library (`.so`) loaded by `plugin-host`. This crate
//! holds the raw `#[repr(C)]` types both sides agree on; nothing here allocates
//! or owns memory. The C header `include/tokenwatch_detector.h` is generated
//! from this file with cbindgen and committed; the `header` test fails when it
//! is out of date (regenerate with
//! `TW_BLESS_HEADER=1 cargo test -p detector-api --test header`).
//!
//! # The contract in one paragraph
//!
//! The library exports one symbol, [`ENTRY_SYMBOL`] (`tokenwatch_detector_v1`),
//! of type [`EntryFn`]. It returns a pointer to a static [`DetectorDescriptor`].
//! The host checks [`DetectorDescriptor::abi_major`], `abi_minor` and
//! `struct_size` before it reads anything else. It then calls `create` with the
//! plugin's JSON config, `process` with each committed batch of audit events,
//! `tick` when time passes, and `destroy` once at the end. Events arrive as
//! [`EventView`]s whose strings are borrowed [`StrView`]s, valid only during the
//! call. Alerts go back through [`HostContext::emit_alert`]; the host copies
//! them before the callback returns. No allocation crosses the boundary.
//!
//! # Writing a plugin in Rust
//!
//! Use the `detector-sdk` crate: implement its `Detector` trait and invoke
//! `export_detector!` once. The SDK catches panics, checks pointers and turns
//! errors into [`STATUS_ERROR`] plus a `last_error` text. `plugins/example-threshold`
//! is a template to copy:
//!
//! ```text
//! [lib] crate-type = ["cdylib"]
//! [dependencies] detector-sdk = { path = ".../crates/detector-sdk" }
//!
//! struct Mine;
//! impl detector_sdk::Detector for Mine { /* new, process, tick */ }
//! detector_sdk::export_detector!(Mine, "mine", "0.1.0", "what it finds");
//! ```
//!
//! Build with `cargo build --release` and drop `target/release/libmine.so` into
//! the plugin folder. Keep `panic = "unwind"` (the default): with
//! `panic = "abort"` a bug in the plugin takes the whole server down.
//!
//! # Writing a plugin in C
//!
//! Include `tokenwatch_detector.h`, define the five functions and a static
//! descriptor, and export the entry symbol:
//!
//! ```c
//! #include "tokenwatch_detector.h"
//! static TwStatus my_create(TwStrView cfg, void **out, TwErrorBuf *err) { *out = calloc(1, 8); return *out ? TW_STATUS_OK : TW_STATUS_ERROR; }
//! static TwStatus my_process(void *st, const TwEventBatch *b, const TwHostContext *ctx) {
//!     for (size_t i = 0; i < b->len; i++) {
//!         const TwEventView *ev = (const TwEventView *)((const char *)b->events + i * b->event_size);
//!         /* ... read ev->client_ip.ptr / .len; call ctx->emit_alert(ctx, &alert) ... */
//!     }
//!     return TW_STATUS_OK;
//! }
//! /* my_tick, my_destroy, my_last_error likewise */
//! static const TwDetectorDescriptor DESC = {
//!     TW_ABI_MAJOR, TW_ABI_MINOR, sizeof(TwDetectorDescriptor),
//!     {"mine", 4}, {"0.1.0", 5}, {"what it finds", 13},
//!     my_create, my_process, my_tick, my_destroy, my_last_error };
//! const TwDetectorDescriptor *tokenwatch_detector_v1(void) { return &DESC; }
//! ```
//!
//! Build with `cc -shared -fPIC -o libmine.so mine.c`. Index events by
//! `event_size`, not `sizeof(TwEventView)`, so the plugin keeps working when a
//! newer host appends event fields.

use core::ffi::c_void;
use core::mem::{offset_of, size_of};

/// Major ABI version. A host refuses a plugin whose major differs from its own.
pub const ABI_MAJOR: u32 = 1;

/// Minor ABI version. Bumped when fields are appended; older plugins keep loading.
pub const ABI_MINOR: u32 = 0;

/// The oldest minor version this host still accepts.
pub const MIN_SUPPORTED_MINOR: u32 = 0;

/// Name of the symbol every plugin exports; its type is [`EntryFn`].
///
/// cbindgen:ignore
pub const ENTRY_SYMBOL: &str = "tokenwatch_detector_v1";

/// The same name NUL-terminated, as dynamic loaders want it.
///
/// cbindgen:ignore
pub const ENTRY_SYMBOL_NUL: &[u8] = b"tokenwatch_detector_v1\0";

/// Return code of every fallible call across the boundary.
///
/// A plain integer rather than a Rust enum: an out-of-range value from a
/// foreign plugin must not be undefined behaviour on the host side.
pub type Status = i32;

/// The call succeeded.
pub const STATUS_OK: Status = 0;
/// The call failed; the reason is in `last_error` (or the create() error buffer).
pub const STATUS_ERROR: Status = 1;

/// Alert severity: low.
pub const SEVERITY_LOW: u32 = 1;
/// Alert severity: medium.
pub const SEVERITY_MEDIUM: u32 = 2;
/// Alert severity: high.
pub const SEVERITY_HIGH: u32 = 3;
/// Alert severity: critical.
pub const SEVERITY_CRITICAL: u32 = 4;

/// A borrowed UTF-8 string: pointer + length in bytes, not NUL-terminated.
///
/// `ptr == NULL` means absent (an unset optional field). A present empty
/// string has a non-NULL `ptr` and `len == 0`. The bytes are owned by whoever
/// produced the view and are only valid as long as that side documents.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct StrView {
    /// First byte, or NULL for "absent".
    pub ptr: *const u8,
    /// Length in bytes.
    pub len: usize,
}

impl StrView {
    /// The absent value (NULL pointer).
    pub const NONE: StrView = StrView {
        ptr: core::ptr::null(),
        len: 0,
    };

    /// A view of a `'static` string, usable in a `static` descriptor.
    pub const fn from_static(s: &'static str) -> StrView {
        StrView {
            ptr: s.as_ptr(),
            len: s.len(),
        }
    }

    /// A view of `s`. The caller keeps `s` alive for as long as the view is used.
    pub fn new(s: &str) -> StrView {
        StrView {
            ptr: s.as_ptr(),
            len: s.len(),
        }
    }

    /// [`StrView::NONE`] for `None`, otherwise a view of the string.
    pub fn from_opt(s: Option<&str>) -> StrView {
        s.map_or(StrView::NONE, StrView::new)
    }

    /// True for the absent value.
    pub fn is_none(&self) -> bool {
        self.ptr.is_null()
    }

    /// The bytes, or `None` when absent.
    ///
    /// # Safety
    /// A non-NULL `ptr` must point to `len` initialised bytes that stay valid
    /// and unchanged for `'a`.
    pub unsafe fn as_bytes<'a>(&self) -> Option<&'a [u8]> {
        if self.ptr.is_null() {
            None
        } else {
            // SAFETY: non-null, and the caller guarantees `len` valid bytes for 'a.
            Some(unsafe { core::slice::from_raw_parts(self.ptr, self.len) })
        }
    }
}

/// One audit event, as a view over host-owned memory.
///
/// Valid only during the `process` call that received it. Field names and
/// meanings are those of the audit store (see design.md "Audit events").
/// `kind`, `outcome` and `source` are always present; the others may be absent.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EventView {
    /// Audit row id; use it as alert evidence.
    pub id: i64,
    /// Event time, microseconds since the Unix epoch (UTC).
    pub time_us: i64,
    /// Dotted event kind, e.g. `auth.login.failure`.
    pub kind: StrView,
    /// `success` or `failure`.
    pub outcome: StrView,
    /// Rejection reason code, e.g. `bad_signature`.
    pub reason: StrView,
    /// Token subject (`sub`).
    pub subject: StrView,
    /// Login name.
    pub username: StrView,
    /// Client IP address as text.
    pub client_ip: StrView,
    /// HTTP User-Agent.
    pub user_agent: StrView,
    /// HTTP method.
    pub method: StrView,
    /// HTTP path.
    pub path: StrView,
    /// Token id (`jti`).
    pub jti: StrView,
    /// Key id (`kid`) of the token's header.
    pub kid: StrView,
    /// Algorithm (`alg`) of the token's header.
    pub alg: StrView,
    /// Short SHA-256 fingerprint of the token (never the token itself).
    pub token_fp: StrView,
    /// Where the event came from (e.g. `server`, `ingest`).
    pub source: StrView,
}

/// A batch of events handed to `process`.
///
/// Event `i` is at `(const char *)events + i * event_size`. `event_size` is at
/// least the v1.0 size of [`EventView`]; a newer host may append fields, so
/// never step by your own `sizeof`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EventBatch {
    /// First event, or NULL when `len == 0`.
    pub events: *const EventView,
    /// Number of events.
    pub len: usize,
    /// Stride in bytes between consecutive events.
    pub event_size: usize,
}

/// An alert a plugin raises through [`HostContext::emit_alert`].
///
/// Owned by the plugin; the host copies every field before the callback
/// returns. `rule`, `summary` and `group_key` are required; `subject` and
/// `client_ip` may be absent. `evidence` lists audit event ids (may be NULL
/// when `evidence_len == 0`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct AlertView {
    /// `sizeof(TwAlertView)` as the plugin was compiled.
    pub struct_size: usize,
    /// One of the `SEVERITY_*` constants.
    pub severity: u32,
    /// Always zero; keeps the layout explicit.
    pub reserved: u32,
    /// Rule identifier within the plugin, e.g. `failed-logins-per-ip`.
    pub rule: StrView,
    /// Subject the alert is about, if any.
    pub subject: StrView,
    /// Client IP the alert is about, if any.
    pub client_ip: StrView,
    /// One human-readable line.
    pub summary: StrView,
    /// Key under which the UI groups repeated alerts (e.g. the IP).
    pub group_key: StrView,
    /// Audit event ids that support the alert.
    pub evidence: *const i64,
    /// Number of ids in `evidence`.
    pub evidence_len: usize,
}

/// Raise an alert (host side, reached through `ctx->emit_alert`).
///
/// - Call it only from inside `process` or `tick`, on the thread that made
///   that call, with the `ctx` of that call.
/// - The alert and everything it points to are read before it returns:
///   stack buffers are fine.
/// - Strings are cut at their first NUL and must be UTF-8; `rule` at most
///   128 bytes, `subject`/`client_ip`/`group_key` 256, `summary` 2048,
///   `evidence` 1000 ids; at most 10 000 alerts per call. Over that, or a
///   bad severity, returns `TW_STATUS_ERROR` and the alert is dropped.
pub type EmitAlertFn =
    unsafe extern "C" fn(ctx: *const HostContext, alert: *const AlertView) -> Status;

/// What the host passes to `process` and `tick`. Valid only during that call.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct HostContext {
    /// `sizeof(TwHostContext)` as the host was compiled.
    pub struct_size: usize,
    /// Opaque host data; do not touch.
    pub host: *mut c_void,
    /// Callback to raise an alert: `ctx->emit_alert(ctx, &alert)`. See `TwEmitAlertFn`.
    pub emit_alert:
        Option<unsafe extern "C" fn(ctx: *const HostContext, alert: *const AlertView) -> Status>,
}

/// A host-owned buffer for the error message of a failed `create`.
///
/// Write at most `cap` bytes of UTF-8 to `ptr` and set `len` to the number
/// written. Truncating is fine.
#[repr(C)]
#[derive(Debug)]
pub struct ErrorBuf {
    /// Start of the buffer.
    pub ptr: *mut u8,
    /// Capacity in bytes.
    pub cap: usize,
    /// Bytes written by the plugin.
    pub len: usize,
}

/// REQUIRED. Build a detector from its JSON config (`{}` when none is configured).
///
/// On success store the new state in `*out_state` and return `TW_STATUS_OK`.
/// On failure write a reason into `err` (at most `err->cap` bytes of UTF-8,
/// then set `err->len`) and return `TW_STATUS_ERROR`; `*out_state` is ignored.
/// `config_json` and `err` are valid only during the call. Called once per
/// state, before any other call on it; may allocate, must not block on the
/// network. Runs under the same time budget as `process`.
pub type CreateFn = unsafe extern "C" fn(
    config_json: StrView,
    out_state: *mut *mut c_void,
    err: *mut ErrorBuf,
) -> Status;

/// REQUIRED. Look at one batch of committed audit events; raise alerts
/// through `ctx->emit_alert`.
///
/// - Lifetimes: `batch`, every event in it, every string of every event and
///   `ctx` are owned by the host and valid only until this call returns:
///   copy what you keep (ids, short keys), never the pointers.
/// - Batches arrive in event-id order; each committed event is delivered
///   once. After a restart of the detection process the plugin starts with a
///   fresh state and resumes after the last batch whose call returned.
/// - Threading: never called concurrently on one state, but successive calls
///   may come from different threads; different states may run concurrently.
/// - Blocking: must not block (no sleeping, no network or disk waits, no
///   waiting on locks another call holds). Each call has a time budget
///   (default 1 s, `detection.call_budget_ms`): a call over it is reported;
///   a call still running at the limit (default 5 s,
///   `detection.call_limit_ms`) is stopped by ending the detection process,
///   and the plugin is quarantined.
/// - Errors: return `TW_STATUS_ERROR` and make `last_error` say why. Errors
///   are counted over a sliding window (default 5 in 60 s); past that the
///   plugin is quarantined until its file changes or an admin re-enables it.
///   A crash (abort, bad pointer) is retried a few times, then quarantined.
/// - Never unwind (C++ exceptions, Rust panics) out of this function.
pub type ProcessFn = unsafe extern "C" fn(
    state: *mut c_void,
    batch: *const EventBatch,
    ctx: *const HostContext,
) -> Status;

/// REQUIRED (may simply return `TW_STATUS_OK`). Time has passed (`now_us`,
/// microseconds since the epoch), with or without events: close windows and
/// raise pending alerts. Called about once a second (`detection.tick_ms`).
/// Same lifetime, threading, blocking and time-budget rules as `process`.
pub type TickFn =
    unsafe extern "C" fn(state: *mut c_void, now_us: i64, ctx: *const HostContext) -> Status;

/// REQUIRED. Free the state. Called at most once per state, never concurrently
/// with another call on it; the state is never used afterwards. Must not
/// block. When the detection process is ended (a crash, a hang, shutdown)
/// destroy is not called: keep nothing in the state that needs it.
pub type DestroyFn = unsafe extern "C" fn(state: *mut c_void);

/// REQUIRED. The reason for the last `TW_STATUS_ERROR` on this state, as UTF-8
/// (invalid bytes are replaced). The text is plugin-owned and must stay valid
/// until the next call on the same state. The host reads at most `len`
/// bytes, stops at the first NUL, and keeps at most 1024 bytes. Must not
/// block; called on the thread of the failed call, right after it.
pub type LastErrorFn = unsafe extern "C" fn(state: *mut c_void) -> StrView;

/// The static description a plugin's entry symbol returns.
///
/// The first three fields never move: the host reads them before anything else.
/// New fields are only ever appended; `struct_size` tells the host which exist.
#[repr(C)]
#[derive(Debug)]
pub struct DetectorDescriptor {
    /// Must equal the host's `TW_ABI_MAJOR`.
    pub abi_major: u32,
    /// The `TW_ABI_MINOR` the plugin was built with.
    pub abi_minor: u32,
    /// `sizeof(TwDetectorDescriptor)` as the plugin was compiled.
    pub struct_size: usize,
    /// Unique plugin name: 1..=64 bytes of `[A-Za-z0-9_.-]`. Static data.
    pub name: StrView,
    /// Plugin version, free text (e.g. `1.2.0`; at most 64 bytes are kept).
    pub version: StrView,
    /// One line saying what the detector finds (at most 512 bytes are kept).
    pub description: StrView,
    /// Required (non-NULL). See `TwCreateFn`.
    pub create: Option<
        unsafe extern "C" fn(
            config_json: StrView,
            out_state: *mut *mut c_void,
            err: *mut ErrorBuf,
        ) -> Status,
    >,
    /// Required (non-NULL). See `TwProcessFn`.
    pub process: Option<
        unsafe extern "C" fn(
            state: *mut c_void,
            batch: *const EventBatch,
            ctx: *const HostContext,
        ) -> Status,
    >,
    /// Required (non-NULL). See `TwTickFn`.
    pub tick: Option<
        unsafe extern "C" fn(state: *mut c_void, now_us: i64, ctx: *const HostContext) -> Status,
    >,
    /// Required (non-NULL). See `TwDestroyFn`.
    pub destroy: Option<unsafe extern "C" fn(state: *mut c_void)>,
    /// Required (non-NULL). See `TwLastErrorFn`.
    pub last_error: Option<unsafe extern "C" fn(state: *mut c_void) -> StrView>,
}

// SAFETY: a descriptor is immutable static data; its pointers refer to
// 'static strings and functions, so sharing it between threads is sound.
// Without this a plugin could not put its descriptor in a `static`.
unsafe impl Sync for DetectorDescriptor {}

extern "C" {
    /// The entry symbol every plugin exports (the only one the host looks up).
    /// Returns a pointer to a static descriptor that stays valid while the
    /// library is loaded. Must not fail, allocate or have side effects.
    ///
    /// Declared here for the C header; Rust plugins get it from
    /// `detector_sdk::export_detector!` and the host looks it up by name.
    pub fn tokenwatch_detector_v1() -> *const DetectorDescriptor;
}

/// Type of the entry symbol `tokenwatch_detector_v1`: returns the static
/// descriptor; must not fail, allocate, block or have side effects.
pub type EntryFn = unsafe extern "C" fn() -> *const DetectorDescriptor;

/// Size of the v1.0 descriptor: the smallest `struct_size` a host accepts.
/// Frozen: appending fields must not change it.
///
/// cbindgen:ignore
pub const DESCRIPTOR_V1_SIZE: usize =
    offset_of!(DetectorDescriptor, last_error) + size_of::<usize>();

/// Size of the v1.0 [`EventView`]: the smallest `event_size` a plugin accepts.
///
/// cbindgen:ignore
pub const EVENT_VIEW_V1_SIZE: usize = offset_of!(EventView, source) + size_of::<StrView>();

/// Size of the v1.0 [`AlertView`]: the smallest `struct_size` a host accepts.
///
/// cbindgen:ignore
pub const ALERT_VIEW_V1_SIZE: usize = offset_of!(AlertView, evidence_len) + size_of::<usize>();

/// Size of the v1.0 [`HostContext`]: the smallest `struct_size` a plugin accepts.
///
/// cbindgen:ignore
pub const HOST_CONTEXT_V1_SIZE: usize = offset_of!(HostContext, emit_alert) + size_of::<usize>();

// The layout is the contract: if any of these fail, an existing plugin would
// read garbage. Checked for the 64-bit targets the project ships on.
#[cfg(target_pointer_width = "64")]
const _: () = {
    assert!(size_of::<StrView>() == 16);
    assert!(size_of::<EventView>() == 240);
    assert!(offset_of!(EventView, time_us) == 8);
    assert!(offset_of!(EventView, kind) == 16);
    assert!(offset_of!(EventView, client_ip) == 96);
    assert!(offset_of!(EventView, source) == 224);
    assert!(size_of::<EventBatch>() == 24);
    assert!(size_of::<AlertView>() == 112);
    assert!(offset_of!(AlertView, severity) == 8);
    assert!(offset_of!(AlertView, rule) == 16);
    assert!(offset_of!(AlertView, group_key) == 80);
    assert!(offset_of!(AlertView, evidence) == 96);
    assert!(size_of::<HostContext>() == 24);
    assert!(size_of::<ErrorBuf>() == 24);
    assert!(offset_of!(DetectorDescriptor, abi_minor) == 4);
    assert!(offset_of!(DetectorDescriptor, struct_size) == 8);
    assert!(offset_of!(DetectorDescriptor, name) == 16);
    assert!(offset_of!(DetectorDescriptor, create) == 64);
    assert!(offset_of!(DetectorDescriptor, last_error) == 96);
    assert!(size_of::<DetectorDescriptor>() == 104);
    assert!(DESCRIPTOR_V1_SIZE == 104);
    assert!(EVENT_VIEW_V1_SIZE == 240);
    assert!(ALERT_VIEW_V1_SIZE == 112);
    assert!(HOST_CONTEXT_V1_SIZE == 24);
    // Option<fn> must be a plain nullable pointer for C's function pointers.
    assert!(size_of::<Option<CreateFn>>() == size_of::<usize>());
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn str_view_distinguishes_absent_from_empty() {
        let absent = StrView::from_opt(None);
        let empty = StrView::new("");
        assert!(absent.is_none());
        assert!(!empty.is_none());
        // SAFETY: both views point at 'static data or nothing.
        unsafe {
            assert_eq!(absent.as_bytes(), None);
            assert_eq!(empty.as_bytes(), Some(&b""[..]));
            assert_eq!(StrView::from_static("abc").as_bytes(), Some(&b"abc"[..]));
        }
    }

    #[test]
    fn entry_symbol_names_agree() {
        assert_eq!(
            &ENTRY_SYMBOL_NUL[..ENTRY_SYMBOL.len()],
            ENTRY_SYMBOL.as_bytes()
        );
        assert_eq!(ENTRY_SYMBOL_NUL.last(), Some(&0));
    }
}
