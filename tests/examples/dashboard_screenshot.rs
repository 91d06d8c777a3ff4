//! Takes the README's dashboard screenshot: a fresh `tokenwatch serve --demo`,
//! a few minutes of its traffic, then the console's dashboard in headless
//! Chromium, saved as PNG.
//!
//! `cargo run -p tokenwatch-e2e --example dashboard_screenshot -- docs/dashboard.png [SECONDS]`

use std::ffi::OsStr;
use std::time::Duration;

use headless_chrome::protocol::cdp::Page::CaptureScreenshotFormatOption;
use headless_chrome::{Browser, LaunchOptions};
use tokenwatch_e2e::{data_dir, Server};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let out = args.next().unwrap_or_else(|| "docs/dashboard.png".into());
    let secs: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(150);
    let (_tmp, dir) = data_dir();
    let s = Server::start_with(&dir, &["--demo"]);
    let password = s
        .admin_password
        .clone()
        .ok_or("no one-time admin password")?;
    eprintln!("demo traffic for {secs} s...");
    std::thread::sleep(Duration::from_secs(secs));

    let profile = tempfile::tempdir()?;
    let opts = LaunchOptions::default_builder()
        .path(Some("/usr/bin/chromium".into()))
        .headless(true)
        .sandbox(false)
        .user_data_dir(Some(profile.path().to_path_buf()))
        .window_size(Some((1400, 1250)))
        .args(
            [
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ]
            .iter()
            .map(OsStr::new)
            .collect(),
        )
        .build()?;
    let browser = Browser::new(opts)?;
    let tab = browser.new_tab()?;
    tab.navigate_to(&s.url("/admin/login"))?
        .wait_until_navigated()?;
    tab.wait_for_element("#username")?.click()?;
    tab.type_str("admin")?;
    tab.wait_for_element("#password")?.click()?;
    tab.type_str(&password)?;
    tab.wait_for_element("#login-submit")?.click()?;
    tab.wait_for_element("#charts")?;
    tab.navigate_to(&s.url("/admin/dashboard?range=hour"))?
        .wait_until_navigated()?;
    tab.wait_for_element("#charts[data-ready=true]")?;
    let png = tab.capture_screenshot(CaptureScreenshotFormatOption::Png, None, None, true)?;
    std::fs::write(&out, png)?;
    eprintln!("wrote {out}");
    Ok(())
}
