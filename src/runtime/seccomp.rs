//! Seccomp profiles: nodelet's RuntimeDefault and Localhost profile loading.
