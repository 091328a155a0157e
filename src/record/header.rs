//! The XDF file header neuroloop writes: provenance, dimensions, the bin grid (replay and
//! fit read it back) and the ids of the streams.

use super::*;

pub(super) fn file_header_body(s: &RecorderSetup) -> String {
    use super::xdf::xml_escape as x;
    let p = &s.provenance;
    let c = &s.clock;
    format!(
        "<datetime>{}</datetime><recorder>neuroloop {}</recorder><neuroloop><version>{}</version>\
         <rig><name>{}</name><path>{}</path><sha256>{}</sha256><toml>{}</toml></rig>\
         <model><path>{}</path><sha256>{}</sha256></model><backend>{}</backend>\
         <dims><units>{}</units><latent>{}</latent><embed>{}</embed><control>{}</control></dims>\
         <bin_grid><t0>{:?}</t0><bin_s>{:?}</bin_s><grace_s>{:?}</grace_s><deadline_s>{:?}</deadline_s></bin_grid>\
         <streams><input>{STREAM_INPUT}</input><bins>{STREAM_BINS}</bins><control>{STREAM_CONTROL}</control>\
         <status>{STREAM_STATUS}</status><timing>{STREAM_TIMING}</timing>{}</streams></neuroloop>",
        utc_now_iso8601(),
        x(&p.neuroloop_version),
        x(&p.neuroloop_version),
        x(&p.rig_name),
        x(&p.rig_path),
        x(&p.rig_sha256),
        x(&p.rig_toml),
        x(&p.model),
        x(&p.model_sha256),
        x(&p.backend),
        s.n_units,
        s.latent,
        s.embed,
        s.control,
        c.t0,
        c.bin_s,
        c.grace_s,
        c.deadline_s,
        if s.sim_truth_latent.is_some() {
            format!("<markers>{STREAM_MARKERS}</markers><sim_truth>{STREAM_SIM_TRUTH}</sim_truth>")
        } else {
            String::new()
        },
    )
}

/// Now as `YYYY-MM-DDTHH:MM:SSZ` (UTC).
fn utc_now_iso8601() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + (month <= 2) as i64;
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}
