//! Node listener (in progress).
