#![no_main]
// See neuroloop::fuzz::lsl_samples.
libfuzzer_sys::fuzz_target!(|data: &[u8]| neuroloop::fuzz::lsl_samples(data));
