// Package framework is berth's scheduling framework: the plugin interfaces, one per
// extension point, the state a scheduling cycle shares between them, the scheduler's view of
// a node (NodeInfo), and Framework, which runs one profile's plugins for one pod.
package framework

import (
	"errors"
	"strings"
)

// Code is the outcome a plugin reports.
type Code int

// The codes a Status carries, as Kubernetes' scheduler framework defines them.
const (
	// Success: the plugin ran and the pod may go on (a nil *Status means Success too).
	Success Code = iota
	// Error: something went wrong inside the plugin; the pod is retried with backoff.
	Error
	// Unschedulable: the pod does not fit now, but preemption or a cluster change may help.
	Unschedulable
	// UnschedulableAndUnresolvable: the pod does not fit and preemption cannot help.
	UnschedulableAndUnresolvable
	// Wait: a Permit plugin holds the pod until it is allowed, rejected or times out.
	Wait
	// Skip: the plugin has nothing to do for this pod (PreFilter, PreScore) and its later
	// extension points are skipped for the cycle.
	Skip
)

var codeNames = [...]string{"Success", "Error", "Unschedulable", "UnschedulableAndUnresolvable", "Wait", "Skip"}

// String returns the code's name.
func (c Code) String() string {
	if c >= 0 && int(c) < len(codeNames) {
		return codeNames[c]
	}
	return "Unknown"
}

// Status is what a plugin returns: a code, the reasons users read, and for Error the cause.
type Status struct {
	code    Code
	reasons []string
	err     error
	plugin  string
}

// NewStatus returns a Status with a code and the reasons behind it.
func NewStatus(code Code, reasons ...string) *Status {
	return &Status{code: code, reasons: reasons}
}

// AsStatus wraps an error in a Status with code Error; nil gives nil (Success).
func AsStatus(err error) *Status {
	if err == nil {
		return nil
	}
	return &Status{code: Error, reasons: []string{err.Error()}, err: err}
}

// Code returns the status' code; a nil Status is Success.
func (s *Status) Code() Code {
	if s == nil {
		return Success
	}
	return s.code
}

// Reasons returns the reasons, each counted on its own in a FitError's message.
func (s *Status) Reasons() []string {
	if s == nil {
		return nil
	}
	return s.reasons
}

// Message joins the reasons with ", ", as Kubernetes does.
func (s *Status) Message() string {
	if s == nil {
		return ""
	}
	return strings.Join(s.reasons, ", ")
}

// Plugin names the plugin that returned the status, once the framework has recorded it.
func (s *Status) Plugin() string {
	if s == nil {
		return ""
	}
	return s.plugin
}

// WithPlugin records which plugin returned the status and returns it.
func (s *Status) WithPlugin(name string) *Status {
	if s != nil {
		s.plugin = name
	}
	return s
}

// IsSuccess reports whether the status is Success.
func (s *Status) IsSuccess() bool { return s.Code() == Success }

// IsWait reports whether a Permit plugin asked to wait.
func (s *Status) IsWait() bool { return s.Code() == Wait }

// IsSkip reports whether the plugin asked to be skipped.
func (s *Status) IsSkip() bool { return s.Code() == Skip }

// IsRejected reports whether the pod was found not to fit (either unschedulable code).
func (s *Status) IsRejected() bool {
	c := s.Code()
	return c == Unschedulable || c == UnschedulableAndUnresolvable
}

// AsError returns the status as an error, nil for Success and Skip.
func (s *Status) AsError() error {
	if s.IsSuccess() || s.IsSkip() {
		return nil
	}
	if s.err != nil {
		return s.err
	}
	return errors.New(s.Message())
}

// Equal reports whether two statuses have the same code and reasons (tests use it).
func (s *Status) Equal(o *Status) bool {
	if s.Code() != o.Code() || len(s.Reasons()) != len(o.Reasons()) {
		return false
	}
	for i, r := range s.Reasons() {
		if o.Reasons()[i] != r {
			return false
		}
	}
	return true
}

// String returns the code and the message, for logs.
func (s *Status) String() string {
	if s == nil {
		return "Success"
	}
	if len(s.reasons) == 0 {
		return s.code.String()
	}
	return s.code.String() + ": " + s.Message()
}
