//! Wire protocol v1 (in progress).
