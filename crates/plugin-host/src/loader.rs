//! Loading one plugin file: private copy, dlopen, ABI checks, create, calls.

use std::ffi::c_void;
use std::fs;
use std::io::{self, Read};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use detector_api::{
    AlertView, EntryFn, ErrorBuf, EventBatch, EventView, HostContext, StrView, ABI_MAJOR,
    ALERT_VIEW_V1_SIZE, DESCRIPTOR_V1_SIZE, ENTRY_SYMBOL, ENTRY_SYMBOL_NUL, MIN_SUPPORTED_MINOR,
    STATUS_ERROR, STATUS_OK,
};

use crate::{AlertRecord, EventRecord, LoadError, PluginInfo, Severity};

/// Longest error text kept from a plugin (create buffer and last_error).
const MAX_ERROR_LEN: usize = 1024;
/// Alerts one process/tick call may raise before the host refuses more; a
/// runaway plugin must not exhaust the server's memory.
const MAX_ALERTS_PER_CALL: usize = 10_000;
/// Per-alert limits, so one alert cannot flood the store or the UI.
const MAX_RULE_LEN: usize = 128;
const MAX_FIELD_LEN: usize = 256;
const MAX_SUMMARY_LEN: usize = 2048;
const MAX_EVIDENCE: usize = 1000;

/// True for names that are safe in file names, log lines and metric labels.
pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-' || c == b'.')
}

/// The function pointers of a checked descriptor, copied out so the host
/// never re-reads plugin memory after the checks.
#[derive(Clone, Copy)]
struct Fns {
    create: unsafe extern "C" fn(StrView, *mut *mut c_void, *mut ErrorBuf) -> i32,
    process: unsafe extern "C" fn(*mut c_void, *const EventBatch, *const HostContext) -> i32,
    tick: unsafe extern "C" fn(*mut c_void, i64, *const HostContext) -> i32,
    destroy: unsafe extern "C" fn(*mut c_void),
    last_error: unsafe extern "C" fn(*mut c_void) -> StrView,
}

/// A loaded and checked library, not yet instantiated.
pub(crate) struct Library {
    fns: Fns,
    info: PluginInfo,
    lib: libloading::Library,
}

/// A running detector: the plugin's state plus the library that owns its code.
pub(crate) struct Instance {
    state: *mut c_void,
    fns: Fns,
    info: PluginInfo,
    // Declared last so it is dropped after `Drop::drop` has called destroy():
    // the code behind `fns` must stay mapped until then.
    _lib: libloading::Library,
}

// SAFETY: the ABI (see the header's "Threading" paragraph) lets successive
// calls on one state come from different threads, and different states be
// used concurrently. `&mut self` on every call keeps one state to one thread
// at a time, which is all the ABI asks.
unsafe impl Send for Instance {}

static COPY_SEQ: AtomicU64 = AtomicU64::new(0);

/// Copy `path` into `dir` under a name no other load has used, so the loader
/// never hands back a cached handle and the original can be replaced freely.
fn private_copy(path: &Path, dir: &Path) -> Result<PathBuf, LoadError> {
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("plugin");
    let stem: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    let mut src = fs::File::open(path).map_err(|source| LoadError::Io {
        path: path.to_owned(),
        source,
    })?;
    loop {
        let seq = COPY_SEQ.fetch_add(1, Ordering::Relaxed);
        let copy = dir.join(format!(
            ".twp-{stem}-{}-{seq}{}",
            std::process::id(),
            std::env::consts::DLL_SUFFIX
        ));
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&copy)
        {
            Ok(mut dst) => {
                io::copy(&mut src, &mut dst).map_err(|source| LoadError::Io {
                    path: copy.clone(),
                    source,
                })?;
                return Ok(copy);
            }
            // A leftover from an earlier process with the same pid: skip it.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(source) => return Err(LoadError::Io { path: copy, source }),
        }
    }
}

/// Refuse files that cannot be a shared library before handing them to the
/// dynamic loader, whose messages for garbage are cryptic.
fn check_magic(path: &Path) -> Result<(), LoadError> {
    let meta = fs::metadata(path).map_err(|source| LoadError::Io {
        path: path.to_owned(),
        source,
    })?;
    if !meta.is_file() {
        return Err(LoadError::NotSharedLibrary {
            path: path.to_owned(),
            detail: "not a regular file".into(),
        });
    }
    let mut magic = [0u8; 4];
    let n = fs::File::open(path)
        .and_then(|mut f| f.read(&mut magic))
        .map_err(|source| LoadError::Io {
            path: path.to_owned(),
            source,
        })?;
    let matches = n == magic.len()
        && if cfg!(target_os = "macos") {
            [*b"\xcf\xfa\xed\xfe", *b"\xca\xfe\xba\xbe"].contains(&magic)
        } else if cfg!(windows) {
            magic[..2] == *b"MZ"
        } else {
            magic == *b"\x7fELF"
        };
    if matches {
        Ok(())
    } else {
        Err(LoadError::NotSharedLibrary {
            path: path.to_owned(),
            detail: "the file does not start with a shared-library header".into(),
        })
    }
}

#[cfg(unix)]
fn dlopen(copy: &Path) -> Result<libloading::Library, libloading::Error> {
    use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW};
    // RTLD_NOW: an unresolved symbol fails here, with a message, instead of
    // killing the server at the first call. RTLD_LOCAL: plugins cannot see or
    // interpose each other's symbols.
    // SAFETY: loading runs the library's initialisers. Plugins are trusted
    // code by design (they run in-process); see the crate docs.
    unsafe { Library::open(Some(copy), RTLD_NOW | RTLD_LOCAL) }.map(Into::into)
}

#[cfg(not(unix))]
fn dlopen(copy: &Path) -> Result<libloading::Library, libloading::Error> {
    // SAFETY: as above.
    unsafe { libloading::Library::new(copy) }
}

/// The bytes of a plugin's string: at most `max` of them (never more than
/// its stated length, so a lying length cannot make the host read past a
/// buffer it was not given), cut at the first NUL (C code pads and
/// terminates; a NUL must never reach the store or the UI).
///
/// # Safety
/// A non-NULL view must point to `min(len, max)` readable bytes.
unsafe fn plugin_bytes<'a>(v: StrView, max: usize) -> Option<&'a [u8]> {
    if v.ptr.is_null() {
        return None;
    }
    // SAFETY: forwarded from the caller, for no more than the stated length.
    let b = unsafe { std::slice::from_raw_parts(v.ptr, v.len.min(max)) };
    Some(b.iter().position(|&c| c == 0).map_or(b, |nul| &b[..nul]))
}

/// A plugin's string as UTF-8 text, read as [`plugin_bytes`] does.
///
/// # Safety
/// As [`plugin_bytes`].
unsafe fn view_text(v: StrView, what: &str, max: usize) -> Result<Option<String>, String> {
    // SAFETY: forwarded from the caller.
    match unsafe { plugin_bytes(v, max) } {
        None => Ok(None),
        Some(b) => std::str::from_utf8(b)
            .map(|s| Some(s.to_owned()))
            .map_err(|_| format!("{what} is not valid UTF-8")),
    }
}

/// Error text from a plugin: bounded, cut at the first NUL, invalid UTF-8
/// replaced (an error message is shown even when the plugin garbled it).
fn lossy_truncated(bytes: &[u8]) -> String {
    let b = &bytes[..bytes.len().min(MAX_ERROR_LEN)];
    let b = b.iter().position(|&c| c == 0).map_or(b, |nul| &b[..nul]);
    String::from_utf8_lossy(b).trim_end().to_owned()
}

impl Library {
    /// Copy, open and check `path`. Nothing of the plugin runs except its
    /// library initialisers and its entry function.
    pub(crate) fn load(path: &Path, private_dir: &Path) -> Result<Library, LoadError> {
        check_magic(path)?;
        let copy = private_copy(path, private_dir)?;
        // The checks read the private copy, the very bytes that will be mapped:
        // the original may change between a check and a copy, the copy may not.
        #[cfg(target_os = "linux")]
        if let Err(detail) = crate::elf::validate(&copy) {
            let _ = fs::remove_file(&copy);
            return Err(LoadError::BadElf {
                path: path.to_owned(),
                detail,
            });
        }
        let opened = dlopen(&copy);
        // On Unix a mapped file stays usable after unlinking, so the copy is
        // removed at once: nothing is left behind even if the server crashes.
        #[cfg(unix)]
        let _ = fs::remove_file(&copy);
        let lib = opened.map_err(|e| LoadError::Open {
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
        // SAFETY: the symbol's type is fixed by the ABI.
        let entry: EntryFn = match unsafe { lib.get::<EntryFn>(ENTRY_SYMBOL_NUL) } {
            Ok(sym) => *sym,
            Err(_) => {
                return Err(LoadError::MissingSymbol {
                    path: path.to_owned(),
                    symbol: ENTRY_SYMBOL,
                })
            }
        };
        // SAFETY: the entry function takes no arguments and per the ABI only
        // returns a pointer to static data.
        let desc = unsafe { entry() };
        if desc.is_null() || !desc.is_aligned() {
            return Err(LoadError::InvalidDescriptor {
                path: path.to_owned(),
                reason: "the entry symbol returned a NULL or misaligned descriptor".into(),
            });
        }
        // The version words are read on their own first: they sit at the same
        // offsets in every ABI version, unlike anything after them.
        // SAFETY: non-NULL, aligned, and every descriptor starts with these fields.
        let (major, minor, size) = unsafe {
            (
                desc.cast::<u32>().read(),
                desc.cast::<u32>().add(1).read(),
                desc.cast::<u8>().add(8).cast::<usize>().read(),
            )
        };
        if major != ABI_MAJOR {
            return Err(LoadError::AbiMajorMismatch {
                path: path.to_owned(),
                found: major,
                expected: ABI_MAJOR,
            });
        }
        // Always false while MIN_SUPPORTED_MINOR is 0; kept so raising the
        // floor later is a one-line change.
        #[allow(clippy::absurd_extreme_comparisons)]
        if minor < MIN_SUPPORTED_MINOR {
            return Err(LoadError::AbiMinorTooOld {
                path: path.to_owned(),
                found: minor,
                min: MIN_SUPPORTED_MINOR,
            });
        }
        if size < DESCRIPTOR_V1_SIZE {
            return Err(LoadError::DescriptorTooSmall {
                path: path.to_owned(),
                found: size,
                min: DESCRIPTOR_V1_SIZE,
            });
        }
        // SAFETY: the plugin declares at least the v1 layout, which is all of
        // DetectorDescriptor today. When fields are appended, read them only
        // when `size` covers them.
        let d = unsafe { &*desc };
        let invalid = |reason: String| LoadError::InvalidDescriptor {
            path: path.to_owned(),
            reason,
        };
        // SAFETY: the descriptor's string views point at static data.
        let (name, version, description) = unsafe {
            (
                // One byte over the limit, so an over-long name is refused, not cut.
                view_text(d.name, "name", 65).map_err(invalid)?,
                view_text(d.version, "version", 256).map_err(invalid)?,
                view_text(d.description, "description", 2048).map_err(invalid)?,
            )
        };
        let name = name.unwrap_or_default();
        if !valid_name(&name) {
            return Err(invalid(format!(
                "name {name:?} must be 1..=64 bytes of [A-Za-z0-9_.-]"
            )));
        }
        let missing = |f: &str| invalid(format!("function pointer `{f}` is NULL"));
        let fns = Fns {
            create: d.create.ok_or_else(|| missing("create"))?,
            process: d.process.ok_or_else(|| missing("process"))?,
            tick: d.tick.ok_or_else(|| missing("tick"))?,
            destroy: d.destroy.ok_or_else(|| missing("destroy"))?,
            last_error: d.last_error.ok_or_else(|| missing("last_error"))?,
        };
        let mut version = version.unwrap_or_default();
        version.truncate(version.floor_char_boundary_compat(64));
        let mut description = description.unwrap_or_default();
        description.truncate(description.floor_char_boundary_compat(512));
        Ok(Library {
            fns,
            info: PluginInfo {
                name,
                version,
                description,
                abi_major: major,
                abi_minor: minor,
                file: path.to_owned(),
            },
            lib,
        })
    }

    pub(crate) fn info(&self) -> &PluginInfo {
        &self.info
    }

    /// Instantiate with a JSON config.
    pub(crate) fn create(self, config_json: &str) -> Result<Instance, LoadError> {
        let mut buf = vec![0u8; MAX_ERROR_LEN];
        let mut err = ErrorBuf {
            ptr: buf.as_mut_ptr(),
            cap: buf.len(),
            len: 0,
        };
        let mut state: *mut c_void = std::ptr::null_mut();
        // SAFETY: per the create contract: config valid during the call,
        // out_state and err writable.
        let rc = unsafe { (self.fns.create)(StrView::new(config_json), &mut state, &mut err) };
        if rc != STATUS_OK {
            let message = lossy_truncated(&buf[..err.len.min(buf.len())]);
            return Err(LoadError::CreateFailed {
                name: self.info.name.clone(),
                message: if message.is_empty() {
                    "create() failed without a message".into()
                } else {
                    message
                },
            });
        }
        Ok(Instance {
            state,
            fns: self.fns,
            info: self.info,
            _lib: self.lib,
        })
    }
}

/// Compatibility shim: `str::floor_char_boundary` is not stable everywhere.
trait FloorCharBoundary {
    fn floor_char_boundary_compat(&self, i: usize) -> usize;
}

impl FloorCharBoundary for String {
    fn floor_char_boundary_compat(&self, i: usize) -> usize {
        let mut i = i.min(self.len());
        while !self.is_char_boundary(i) {
            i -= 1;
        }
        i
    }
}

/// Receives the alerts of one call; `host` in the HostContext points here.
pub(crate) struct Collector<'a> {
    plugin: &'a str,
    time_us: i64,
    pub(crate) alerts: Vec<AlertRecord>,
    pub(crate) rejected: Vec<String>,
}

impl<'a> Collector<'a> {
    pub(crate) fn new(plugin: &'a str, time_us: i64) -> Collector<'a> {
        Collector {
            plugin,
            time_us,
            alerts: Vec::new(),
            rejected: Vec::new(),
        }
    }

    /// # Safety
    /// `a` points to an AlertView of at least ALERT_VIEW_V1_SIZE whose views
    /// are readable for the duration of the call.
    unsafe fn accept(&mut self, a: &AlertView) -> Result<AlertRecord, String> {
        if self.alerts.len() >= MAX_ALERTS_PER_CALL {
            return Err(format!(
                "more than {MAX_ALERTS_PER_CALL} alerts in one call"
            ));
        }
        if a.struct_size < ALERT_VIEW_V1_SIZE {
            return Err(format!(
                "alert struct_size {} is below {ALERT_VIEW_V1_SIZE}",
                a.struct_size
            ));
        }
        let severity = Severity::from_raw(a.severity)
            .ok_or_else(|| format!("severity {} is not 1..=4", a.severity))?;
        let bounded = |v: StrView, what: &str, max: usize| -> Result<Option<String>, String> {
            // SAFETY: per this function's contract.
            let text = unsafe { view_text(v, what, max + 1) }?;
            // Measured after the cut at the first NUL: a short string in a
            // big zero-padded buffer is fine, a long one is refused.
            if text.as_ref().is_some_and(|t| t.len() > max) {
                return Err(format!("{what} is longer than {max} bytes"));
            }
            Ok(text)
        };
        let rule = bounded(a.rule, "rule", MAX_RULE_LEN)?
            .filter(|r| !r.is_empty())
            .ok_or("rule is empty")?;
        let group_key = bounded(a.group_key, "group_key", MAX_FIELD_LEN)?.unwrap_or_default();
        let summary = bounded(a.summary, "summary", MAX_SUMMARY_LEN)?.unwrap_or_default();
        let subject = bounded(a.subject, "subject", MAX_FIELD_LEN)?;
        let client_ip = bounded(a.client_ip, "client_ip", MAX_FIELD_LEN)?;
        if a.evidence_len > MAX_EVIDENCE {
            return Err(format!("more than {MAX_EVIDENCE} evidence ids"));
        }
        let evidence = if a.evidence_len == 0 {
            Vec::new()
        } else if a.evidence.is_null() {
            return Err("evidence is NULL but evidence_len is not 0".into());
        } else {
            // SAFETY: per this function's contract.
            unsafe { std::slice::from_raw_parts(a.evidence, a.evidence_len) }.to_vec()
        };
        Ok(AlertRecord {
            plugin: self.plugin.to_owned(),
            rule,
            severity,
            subject,
            client_ip,
            summary,
            group_key,
            evidence,
            time_us: self.time_us,
        })
    }
}

unsafe extern "C" fn emit_alert(ctx: *const HostContext, alert: *const AlertView) -> i32 {
    // Nothing may unwind into the plugin's frames.
    let r = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `ctx` is the context this host built for the current call;
        // its `host` field points to the live Collector of that call.
        let collector = unsafe {
            ctx.as_ref()
                .and_then(|c| c.host.cast::<Collector<'_>>().as_mut())
        };
        let Some(collector) = collector else {
            return STATUS_ERROR;
        };
        // SAFETY: per the emit_alert contract the alert is readable during the call.
        let Some(a) = (unsafe { alert.as_ref() }) else {
            collector.rejected.push("alert is NULL".into());
            return STATUS_ERROR;
        };
        // SAFETY: as above.
        match unsafe { collector.accept(a) } {
            Ok(rec) => {
                collector.alerts.push(rec);
                STATUS_OK
            }
            Err(reason) => {
                collector.rejected.push(reason);
                STATUS_ERROR
            }
        }
    }));
    r.unwrap_or(STATUS_ERROR)
}

/// A view over an owned record; valid while `r` is.
pub(crate) fn event_view(r: &EventRecord) -> EventView {
    EventView {
        id: r.id,
        time_us: r.time_us,
        kind: StrView::new(&r.kind),
        outcome: StrView::new(&r.outcome),
        reason: StrView::from_opt(r.reason.as_deref()),
        subject: StrView::from_opt(r.subject.as_deref()),
        username: StrView::from_opt(r.username.as_deref()),
        client_ip: StrView::from_opt(r.client_ip.as_deref()),
        user_agent: StrView::from_opt(r.user_agent.as_deref()),
        method: StrView::from_opt(r.method.as_deref()),
        path: StrView::from_opt(r.path.as_deref()),
        jti: StrView::from_opt(r.jti.as_deref()),
        kid: StrView::from_opt(r.kid.as_deref()),
        alg: StrView::from_opt(r.alg.as_deref()),
        token_fp: StrView::from_opt(r.token_fp.as_deref()),
        source: StrView::new(&r.source),
    }
}

impl Instance {
    pub(crate) fn info(&self) -> &PluginInfo {
        &self.info
    }

    fn context(collector: &mut Collector<'_>) -> HostContext {
        HostContext {
            struct_size: std::mem::size_of::<HostContext>(),
            host: (collector as *mut Collector<'_>).cast(),
            emit_alert: Some(emit_alert),
        }
    }

    fn result(&self, rc: i32) -> Result<(), String> {
        if rc == STATUS_OK {
            return Ok(());
        }
        // SAFETY: the state is live; the returned view is valid until the
        // next call on it, and it is copied right away.
        let view = unsafe { (self.fns.last_error)(self.state) };
        // SAFETY: as above; no more than MAX_ERROR_LEN bytes are read.
        let text = unsafe { plugin_bytes(view, MAX_ERROR_LEN) }
            .map(lossy_truncated)
            .unwrap_or_default();
        Err(if text.is_empty() {
            format!("returned status {rc} without a message")
        } else {
            text
        })
    }

    /// Feed views (which must outlive the call) to the plugin.
    pub(crate) fn process(
        &mut self,
        views: &[EventView],
        collector: &mut Collector<'_>,
    ) -> Result<(), String> {
        let batch = EventBatch {
            events: if views.is_empty() {
                std::ptr::null()
            } else {
                views.as_ptr()
            },
            len: views.len(),
            event_size: std::mem::size_of::<EventView>(),
        };
        let ctx = Self::context(collector);
        // SAFETY: the state is live and used by this thread only; batch, views
        // and ctx outlive the call.
        let rc = unsafe { (self.fns.process)(self.state, &batch, &ctx) };
        self.result(rc)
    }

    pub(crate) fn tick(
        &mut self,
        now_us: i64,
        collector: &mut Collector<'_>,
    ) -> Result<(), String> {
        let ctx = Self::context(collector);
        // SAFETY: as in process.
        let rc = unsafe { (self.fns.tick)(self.state, now_us, &ctx) };
        self.result(rc)
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        // SAFETY: called exactly once, with the state create() returned; the
        // library is still loaded (dropped after this).
        unsafe { (self.fns.destroy)(self.state) };
    }
}
