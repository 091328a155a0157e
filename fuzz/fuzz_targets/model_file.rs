#![no_main]
// See neuroloop::fuzz::model_file.
libfuzzer_sys::fuzz_target!(|data: &[u8]| neuroloop::fuzz::model_file(data));
