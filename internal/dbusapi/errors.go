package dbusapi

import (
	"errors"
	"fmt"

	"github.com/godbus/dbus/v5"

	"github.com/caplance/caplance/internal/dbusname"
	"github.com/caplance/caplance/internal/registry"
)

// The error names of caplanced.dbus(7), ERRORS.
const (
	ErrorInvalidArgument = dbusname.ErrorPrefix + "InvalidArgument"
	ErrorNotFound        = dbusname.ErrorPrefix + "NotFound"
	ErrorAlreadyExists   = dbusname.ErrorPrefix + "AlreadyExists"
	ErrorAccessDenied    = dbusname.ErrorPrefix + "AccessDenied"
	ErrorNotSupported    = dbusname.ErrorPrefix + "NotSupported"
	ErrorFailed          = dbusname.ErrorPrefix + "Failed"
	ErrorUnchanged       = dbusname.ErrorPrefix + "Unchanged"
)

// The kinds of refusal of this package; the others are the registry's.
var (
	errAccessDenied = errors.New("access denied")
	errNotSupported = errors.New("not supported")
	// errInvalidArgs: arguments of the wrong D-Bus type, refused as
	// godbus refuses those it cannot convert.
	errInvalidArgs = errors.New("invalid arguments")
)

// apiError is a refusal of this package: a kind and a message for a
// person.
type apiError struct {
	kind error
	msg  string
}

func (e *apiError) Error() string { return e.msg }
func (e *apiError) Unwrap() error { return e.kind }

func errorf(kind error, format string, args ...any) error {
	return &apiError{kind: kind, msg: fmt.Sprintf(format, args...)}
}

// errorNames maps each kind of error to its D-Bus name, in the order they
// are tested.
var errorNames = []struct {
	kind error
	name string
}{
	{errAccessDenied, ErrorAccessDenied},
	{errNotSupported, ErrorNotSupported},
	{errInvalidArgs, "org.freedesktop.DBus.Error.InvalidArgs"},
	{registry.ErrInvalidArgument, ErrorInvalidArgument},
	{registry.ErrNotFound, ErrorNotFound},
	{registry.ErrAlreadyExists, ErrorAlreadyExists},
	{registry.ErrUnchanged, ErrorUnchanged},
	{registry.ErrFailed, ErrorFailed},
}

// dbusError is the one place errors become D-Bus errors: the name from the
// kind the error wraps (Failed when it wraps none), the message from the
// error itself.
func dbusError(err error) *dbus.Error {
	if err == nil {
		return nil
	}
	name := ErrorFailed
	for _, e := range errorNames {
		if errors.Is(err, e.kind) {
			name = e.name
			break
		}
	}
	return dbus.NewError(name, []any{err.Error()})
}
