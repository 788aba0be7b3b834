package dbusapi

import (
	"github.com/caplance/caplance/internal/config"
	"github.com/caplance/caplance/internal/quote"
	"github.com/caplance/caplance/internal/registry"
)

// MaxHealthDetail bounds ReportHealth's detail: the longest an exec check's
// output (probe.MaxOutput) and an absolute path make, with room to spare.
// A detail is repeated in signals and properties to every reader.
const MaxHealthDetail = 16 << 10

// The arguments are checked here, at the edge, after authorization and
// before the registry sees them: a name no backend can have is refused as
// InvalidArgument by every method, never looked up (so never NotFound;
// AddBackend leaves it to the registry's Add, which checks a whole backend,
// and AddService to config's service rules), and
// the error repeats at most a short prefix of it (quote.Q). The methods
// write cmp.Or(s.mutable(…), checks…): the first refusal wins, so a caller
// without the right gets AccessDenied whatever its arguments.

func checkName(name string) error {
	if err := config.CheckBackendName(name); err != nil {
		return errorf(registry.ErrInvalidArgument, "backend name %s: %v", quote.Q(name), err)
	}
	return nil
}

func checkServiceName(name string) error {
	if err := config.CheckBackendName(name); err != nil {
		return errorf(registry.ErrInvalidArgument, "service name %s: %v", quote.Q(name), err)
	}
	return nil
}

func checkDetail(detail string) error {
	if len(detail) > MaxHealthDetail {
		return errorf(registry.ErrInvalidArgument, "detail %s: %d bytes, at most %d", quote.Q(detail), len(detail), MaxHealthDetail)
	}
	return nil
}
