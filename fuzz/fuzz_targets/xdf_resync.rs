#![no_main]
// See neuroloop::fuzz::xdf_resync.
libfuzzer_sys::fuzz_target!(|data: &[u8]| neuroloop::fuzz::xdf_resync(data));
