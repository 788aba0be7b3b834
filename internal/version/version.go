// Package version holds the build's version string, injected by the Makefile
// with -ldflags "-X github.com/caplance/caplance/internal/version.Version=…".
package version

// Version is the release version; "dev" for builds outside the Makefile.
var Version = "dev"
