package scheduler

import (
	"fmt"
	"strings"

	schedulerv1 "berth.dev/berth/specs/scheduler/v1"
)

// Code is the outcome of a plugin's step; the values and meanings are the scheduling
// framework's (and the protocol's Code).
type Code int

// The codes, as the scheduling framework defines them.
const (
	// Success: the pod may go on (a nil *Status is Success too).
	Success Code = iota
	// Error: something went wrong in the plugin; the pod is retried with backoff.
	Error
	// Unschedulable: the pod does not fit now; preemption or a cluster change may help.
	Unschedulable
	// UnschedulableAndUnresolvable: the pod does not fit and preemption cannot help.
	UnschedulableAndUnresolvable
	// Wait: from Permit only, hold the pod.
	Wait
	// Skip: from PreFilter or PreScore only, the plugin has nothing to do for the pod.
	Skip
)

var codeNames = [...]string{"Success", "Error", "Unschedulable", "UnschedulableAndUnresolvable", "Wait", "Skip"}

// String returns the code's name.
func (c Code) String() string {
	if c >= 0 && int(c) < len(codeNames) {
		return codeNames[c]
	}
	return fmt.Sprintf("Code(%d)", int(c))
}

// Status is a plugin's answer: a code and the reasons users read in events.
type Status struct {
	Code    Code
	Reasons []string
}

// NewStatus returns a Status with a code and its reasons.
func NewStatus(code Code, reasons ...string) *Status {
	return &Status{Code: code, Reasons: reasons}
}

// AsStatus turns an error into an Error status; nil gives nil (Success).
func AsStatus(err error) *Status {
	if err == nil {
		return nil
	}
	return &Status{Code: Error, Reasons: []string{err.Error()}}
}

// IsSuccess reports whether the status is Success (nil is).
func (s *Status) IsSuccess() bool { return s == nil || s.Code == Success }

// Message joins the reasons with ", ", as Kubernetes does.
func (s *Status) Message() string {
	if s == nil {
		return ""
	}
	return strings.Join(s.Reasons, ", ")
}

// String returns the code and message, for logs.
func (s *Status) String() string {
	if s.IsSuccess() {
		return "Success"
	}
	if len(s.Reasons) == 0 {
		return s.Code.String()
	}
	return s.Code.String() + ": " + s.Message()
}

// toProto converts a Status to the wire.
func (s *Status) toProto() *schedulerv1.Status {
	if s == nil {
		return &schedulerv1.Status{}
	}
	return &schedulerv1.Status{Code: schedulerv1.Code(s.Code), Reasons: s.Reasons}
}

// statusFromProto converts a wire status; an unknown code becomes an Error naming it, so a
// newer plugin's code never passes for success.
func statusFromProto(p *schedulerv1.Status) *Status {
	if p == nil || p.Code == schedulerv1.Code_CODE_SUCCESS {
		return nil
	}
	c := Code(p.Code)
	if c < Success || c > Skip {
		return NewStatus(Error, fmt.Sprintf("plugin answered unknown status code %d (%s)", int32(p.Code), strings.Join(p.Reasons, ", ")))
	}
	return &Status{Code: c, Reasons: p.Reasons}
}
