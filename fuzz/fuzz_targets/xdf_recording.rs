#![no_main]
// See neuroloop::fuzz::xdf_recording.
libfuzzer_sys::fuzz_target!(|data: &[u8]| neuroloop::fuzz::xdf_recording(data));
