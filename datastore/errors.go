package datastore

import (
	"errors"
	"fmt"
)

var (
	// ErrNotFound means the key does not exist (or no longer does).
	ErrNotFound = errors.New("not found")
	// ErrConflict means a compare-and-swap lost: the key moved past the expected revision, or a
	// key to be created exists. Re-read and try again (see Retry).
	ErrConflict = errors.New("conflict")
)

// CorruptError reports a stored value that does not decode into its record type.
type CorruptError struct {
	Key string
	Err error
}

func (e *CorruptError) Error() string {
	return fmt.Sprintf("corrupt value at %s: %v", e.Key, e.Err)
}

func (e *CorruptError) Unwrap() error { return e.Err }

// CorruptKeys lists the keys of every *CorruptError in err's tree, in order; nil if none.
// List's partial results are recognised this way.
func CorruptKeys(err error) []string {
	var keys []string
	walkErrors(err, func(e error) bool {
		if ce, ok := e.(*CorruptError); ok {
			keys = append(keys, ce.Key)
			return false
		}
		return true
	})
	return keys
}

// OnlyCorrupt reports whether err is non-nil and made only of *CorruptError values (possibly
// joined or wrapped), meaning the results that came with it are complete except for those keys.
func OnlyCorrupt(err error) bool {
	switch x := err.(type) {
	case nil:
		return false
	case *CorruptError:
		return true
	case interface{ Unwrap() []error }:
		for _, e := range x.Unwrap() {
			if !OnlyCorrupt(e) {
				return false
			}
		}
		return true
	case interface{ Unwrap() error }:
		return OnlyCorrupt(x.Unwrap())
	}
	return false
}

// walkErrors visits err and, while visit returns true, what it wraps.
func walkErrors(err error, visit func(error) bool) {
	if err == nil || !visit(err) {
		return
	}
	switch x := err.(type) {
	case interface{ Unwrap() []error }:
		for _, e := range x.Unwrap() {
			walkErrors(e, visit)
		}
	case interface{ Unwrap() error }:
		walkErrors(x.Unwrap(), visit)
	}
}
