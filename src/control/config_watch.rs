//! Watches the config file for a new version: written and closed, or renamed into place, in its
//! directory. Sends one debounced signal per change; knows nothing of what a config is.
//!
//! On Linux this is inotify with a mask of its own: closes after writing and renames, but not
//! plain writes. The store often lives beside the config, and a general-purpose watcher is
//! woken by every page SQLite writes there (thousands a second under load, about 2% of the
//! gateway's CPU measured at 35k req/s). Elsewhere `notify` watches the directory.

use std::ffi::OsString;
use std::io;
use std::path::Path;
use std::time::Duration;

use tokio::sync::mpsc;

/// Saves within this window count as one (editors write a file in several steps).
pub(super) const DEBOUNCE: Duration = Duration::from_millis(150);

/// Watches `file`'s directory (not the file: editors and config maps replace it by rename) and
/// sends on `tx` after each change to `file`. The watch lives as long as the returned guard.
pub(super) fn watch(file: &Path, tx: mpsc::UnboundedSender<()>) -> io::Result<Guard> {
    let dir = file.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
    let name =
        file.file_name().map(|n| n.to_os_string()).ok_or_else(|| io::Error::other("the config path names no file"))?;
    imp::watch(&dir, name, tx)
}

#[cfg(target_os = "linux")]
mod imp {
    use futures_util::StreamExt;
    use inotify::{Inotify, WatchMask};

    use super::*;

    pub struct Guard(tokio::task::JoinHandle<()>);

    impl Drop for Guard {
        fn drop(&mut self) {
            self.0.abort();
        }
    }

    pub fn watch(dir: &Path, name: OsString, tx: mpsc::UnboundedSender<()>) -> io::Result<Guard> {
        let inotify = Inotify::init()?;
        inotify.watches().add(dir, WatchMask::CLOSE_WRITE | WatchMask::MOVED_TO)?;
        let mut events = inotify.into_event_stream([0u8; 4096])?;
        Ok(Guard(tokio::spawn(async move {
            let due = tokio::time::sleep(Duration::ZERO);
            tokio::pin!(due);
            let mut pending = false;
            loop {
                tokio::select! {
                    event = events.next() => match event {
                        Some(Ok(e)) if e.name.as_deref() == Some(name.as_os_str()) => {
                            pending = true;
                            due.as_mut().reset(tokio::time::Instant::now() + DEBOUNCE);
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "the config watch failed; reload with SIGHUP");
                            return;
                        }
                        None => return,
                    },
                    () = &mut due, if pending => {
                        pending = false;
                        if tx.send(()).is_err() {
                            return;
                        }
                    }
                }
            }
        })))
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use notify_debouncer_mini::notify::{RecommendedWatcher, RecursiveMode};
    use notify_debouncer_mini::{DebounceEventResult, Debouncer, new_debouncer};

    use super::*;

    pub struct Guard(Debouncer<RecommendedWatcher>);

    pub fn watch(dir: &Path, name: OsString, tx: mpsc::UnboundedSender<()>) -> io::Result<Guard> {
        let mut d = new_debouncer(DEBOUNCE, move |res: DebounceEventResult| {
            if let Ok(events) = res
                && events.iter().any(|e| e.path.file_name() == Some(name.as_os_str()))
            {
                let _ = tx.send(());
            }
        })
        .map_err(io::Error::other)?;
        d.watcher().watch(dir, RecursiveMode::NonRecursive).map_err(io::Error::other)?;
        Ok(Guard(d))
    }
}

pub(super) use imp::Guard;
