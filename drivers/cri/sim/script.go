package sim

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// The streams a command writes to.
const (
	stdout = 0
	stderr = 1
)

// clock is how a command spends time. A container's main command runs on a virtual clock
// (sleeps only move the time its later output and its exit are scheduled at, so no
// goroutine waits for it); an exec runs on the real one.
type clock interface {
	// sleep spends d, or returns an error when the command is cancelled first.
	sleep(d time.Duration) error
	// forever is a command that does not end by itself (sleep infinity, httpd); it
	// returns when the command is cancelled.
	forever() error
}

// shell interprets the command contract of README.md: a few busybox commands and `sh -c`
// scripts of them, without processes.
type shell struct {
	env      []keyValue
	hostname string
	workDir  string
	files    fileResolver
	stdin    io.Reader // nil: /dev/null
	out      func(stream int, data []byte)
	clock    clock
	// serve is called by httpd with its port and document root (main commands only).
	serve func(port int32, dir string)
	// exited is set by the exit builtin: the shell itself ends.
	exited bool
}

type keyValue struct{ key, value string }

// errForever ends a command that runs until it is stopped (on the virtual clock).
var errForever = errors.New("runs until stopped")

// errNotCommand is a command line that the contract does not know at all.
var errNotCommand = errors.New("command not known to the simulated runtime")

// run interprets argv and returns the exit code. err is errForever when the command does
// not end by itself, errNotCommand for a program the contract does not know, or the
// clock's error when it was cancelled.
func (s *shell) run(argv []string) (int, error) {
	if len(argv) == 0 {
		return 0, errNotCommand
	}
	name := path.Base(argv[0])
	if name == "sh" || name == "ash" || name == "bash" {
		if len(argv) >= 3 && argv[1] == "-c" {
			return s.script(argv[2])
		}
		if len(argv) == 1 {
			if s.stdin == nil {
				return 0, nil // a shell reading an empty stdin ends at once
			}
			script, err := io.ReadAll(s.stdin)
			if err != nil {
				return 1, nil
			}
			return s.script(string(script))
		}
		s.out(stderr, fmt.Appendf(nil, "sh: unsupported option %q\n", argv[1]))
		return 2, nil
	}
	code, known, err := s.builtin(argv, false)
	if !known {
		return 0, errNotCommand
	}
	return code, err
}

// script runs the simple commands of a `sh -c` script joined by ;, && and ||.
func (s *shell) script(src string) (int, error) {
	cmds, err := parseScript(src, s.lookup)
	if err != nil {
		s.out(stderr, fmt.Appendf(nil, "sh: %v\n", err))
		return 2, nil
	}
	code := 0
	for i, c := range cmds {
		if i > 0 {
			switch c.after {
			case "&&":
				if code != 0 {
					continue
				}
			case "||":
				if code == 0 {
					continue
				}
			}
		}
		if len(c.words) == 0 {
			continue
		}
		if c.words[0] == "exit" {
			s.exited = true
			if len(c.words) > 1 {
				n, err := strconv.Atoi(c.words[1])
				if err != nil {
					s.out(stderr, fmt.Appendf(nil, "sh: exit: Illegal number: %s\n", c.words[1]))
					return 2, nil
				}
				return n & 0xff, nil
			}
			return code, nil
		}
		var known bool
		code, known, err = s.builtin(c.words, true)
		if err != nil {
			return code, err
		}
		if !known {
			s.out(stderr, fmt.Appendf(nil, "sh: %s: not found\n", c.words[0]))
			code = 127
		}
	}
	return code, nil
}

// builtin runs one of the contract's commands; known is false for any other.
func (s *shell) builtin(argv []string, inShell bool) (code int, known bool, err error) {
	switch path.Base(argv[0]) {
	case "true":
		return 0, true, nil
	case "false":
		return 1, true, nil
	case "echo":
		words, newline := argv[1:], true
		if len(words) > 0 && words[0] == "-n" {
			words, newline = words[1:], false
		}
		line := strings.Join(words, " ")
		if newline {
			line += "\n"
		}
		if line != "" {
			s.out(stdout, []byte(line))
		}
		return 0, true, nil
	case "hostname":
		s.out(stdout, []byte(s.hostname+"\n"))
		return 0, true, nil
	case "env", "printenv":
		var b bytes.Buffer
		for _, kv := range s.env {
			b.WriteString(kv.key + "=" + kv.value + "\n")
		}
		s.out(stdout, b.Bytes())
		return 0, true, nil
	case "sleep":
		if len(argv) < 2 {
			s.out(stderr, []byte("sleep: missing operand\n"))
			return 1, true, nil
		}
		if argv[1] == "infinity" || argv[1] == "inf" {
			return 0, true, s.clock.forever()
		}
		secs, perr := strconv.ParseFloat(argv[1], 64)
		if perr != nil || secs < 0 || math.IsNaN(secs) || math.IsInf(secs, 0) {
			s.out(stderr, fmt.Appendf(nil, "sleep: invalid number '%s'\n", argv[1]))
			return 1, true, nil
		}
		return 0, true, s.clock.sleep(time.Duration(secs * float64(time.Second)))
	case "cat":
		return s.cat(argv[1:])
	case "httpd":
		port, dir, perr := parseHttpd(argv[1:])
		if perr != nil {
			s.out(stderr, fmt.Appendf(nil, "httpd: %v\n", perr))
			return 1, true, nil
		}
		if s.serve != nil {
			s.serve(port, dir)
		}
		return 0, true, s.clock.forever()
	}
	return 0, false, nil
}

// cat copies files (through the container's mounts) or stdin to stdout.
func (s *shell) cat(files []string) (int, bool, error) {
	if len(files) == 0 || (len(files) == 1 && files[0] == "-") {
		if s.stdin == nil {
			return 0, true, nil
		}
		buf := make([]byte, 32<<10)
		for {
			n, err := s.stdin.Read(buf)
			if n > 0 {
				s.out(stdout, append([]byte(nil), buf[:n]...))
			}
			if err != nil {
				return 0, true, nil
			}
		}
	}
	code := 0
	for _, f := range files {
		p := f
		if !path.IsAbs(p) {
			p = path.Join(s.workDir, p)
		}
		data, err := s.files.read(p)
		if err != nil {
			code = 1
			if errors.Is(err, errIsDir) {
				s.out(stderr, fmt.Appendf(nil, "cat: read error: Is a directory\n"))
			} else {
				s.out(stderr, fmt.Appendf(nil, "cat: can't open '%s': No such file or directory\n", f))
			}
			continue
		}
		s.out(stdout, data)
	}
	return code, true, nil
}

// lookup is the value of a variable for expansion ("" when unset, as in sh).
func (s *shell) lookup(name string) string {
	for i := len(s.env) - 1; i >= 0; i-- {
		if s.env[i].key == name {
			return s.env[i].value
		}
	}
	return ""
}

// parseHttpd reads busybox httpd's -f -p [IP:]PORT -h DIR.
func parseHttpd(args []string) (int32, string, error) {
	port, dir := int32(80), "/www"
	for i := 0; i < len(args); i++ {
		switch args[i] {
		case "-f", "-v", "-vv":
		case "-p", "-h":
			if i+1 >= len(args) {
				return 0, "", fmt.Errorf("option %s needs a value", args[i])
			}
			if args[i] == "-h" {
				dir = args[i+1]
			} else {
				v := args[i+1]
				if j := strings.LastIndex(v, ":"); j >= 0 {
					v = v[j+1:]
				}
				n, err := strconv.ParseUint(v, 10, 16)
				if err != nil || n == 0 {
					return 0, "", fmt.Errorf("bad port %q", args[i+1])
				}
				port = int32(n)
			}
			i++
		default:
			return 0, "", fmt.Errorf("unsupported option %q", args[i])
		}
	}
	return port, dir, nil
}

// simpleCommand is one command of a script and the operator before it.
type simpleCommand struct {
	after string // "", ";", "&&" or "||"
	words []string
}

// parseScript splits a script into simple commands, honouring single and double quotes
// and backslashes, and expanding $VAR and ${VAR} outside single quotes.
func parseScript(src string, lookup func(string) string) ([]simpleCommand, error) {
	var (
		cmds    []simpleCommand
		cur     = simpleCommand{}
		word    strings.Builder
		inWord  bool
		pending string
	)
	endWord := func() {
		if inWord {
			cur.words = append(cur.words, word.String())
			word.Reset()
			inWord = false
		}
	}
	endCommand := func(op string) error {
		endWord()
		if len(cur.words) == 0 && op != ";" && op != "" {
			return fmt.Errorf("syntax error: unexpected %q", op)
		}
		cur.after = pending
		cmds = append(cmds, cur)
		cur = simpleCommand{}
		pending = op
		return nil
	}
	expand := func(i int) int {
		// src[i] == '$'
		if i+1 < len(src) && src[i+1] == '{' {
			end := strings.IndexByte(src[i+2:], '}')
			if end < 0 {
				word.WriteByte('$')
				return i + 1
			}
			word.WriteString(lookup(src[i+2 : i+2+end]))
			return i + 3 + end
		}
		j := i + 1
		for j < len(src) && (src[j] == '_' || isAlnum(src[j])) {
			j++
		}
		if j == i+1 {
			word.WriteByte('$')
			return i + 1
		}
		word.WriteString(lookup(src[i+1 : j]))
		return j
	}
	for i := 0; i < len(src); {
		c := src[i]
		switch {
		case c == ' ' || c == '\t':
			endWord()
			i++
		case c == '\n' || c == ';':
			if err := endCommand(";"); err != nil {
				return nil, err
			}
			i++
		case c == '&' && i+1 < len(src) && src[i+1] == '&':
			if err := endCommand("&&"); err != nil {
				return nil, err
			}
			i += 2
		case c == '|' && i+1 < len(src) && src[i+1] == '|':
			if err := endCommand("||"); err != nil {
				return nil, err
			}
			i += 2
		case c == '\'':
			end := strings.IndexByte(src[i+1:], '\'')
			if end < 0 {
				return nil, errors.New("syntax error: unterminated quoted string")
			}
			word.WriteString(src[i+1 : i+1+end])
			inWord = true
			i += end + 2
		case c == '"':
			inWord = true
			i++
			for {
				if i >= len(src) {
					return nil, errors.New("syntax error: unterminated quoted string")
				}
				if src[i] == '"' {
					i++
					break
				}
				if src[i] == '\\' && i+1 < len(src) && strings.IndexByte("$`\"\\\n", src[i+1]) >= 0 {
					word.WriteByte(src[i+1])
					i += 2
					continue
				}
				if src[i] == '$' {
					i = expand(i)
					continue
				}
				word.WriteByte(src[i])
				i++
			}
		case c == '\\':
			if i+1 < len(src) {
				word.WriteByte(src[i+1])
			}
			inWord = true
			i += 2
		case c == '$':
			inWord = true
			i = expand(i)
		case c == '|' || c == '&' || c == '<' || c == '>' || c == '`':
			return nil, fmt.Errorf("syntax error: %q is not supported by the simulated runtime", string(c))
		default:
			word.WriteByte(c)
			inWord = true
			i++
		}
	}
	endWord()
	if len(cur.words) > 0 {
		cur.after = pending
		cmds = append(cmds, cur)
	} else if pending == "&&" || pending == "||" {
		return nil, errors.New("syntax error: unexpected end of file")
	}
	return cmds, nil
}

func isAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

// errIsDir is a read of a directory.
var errIsDir = errors.New("is a directory")

// fileResolver reads the files of a container: its CRI mounts map container paths to
// host paths, and a few files the runtime itself would make (/etc/hostname).
type fileResolver struct {
	mounts   []mountPoint
	hostname string
}

type mountPoint struct{ containerPath, hostPath string }

// hostPath maps a container path to a host path through the longest matching mount.
func (f fileResolver) hostPath(p string) (string, bool) {
	p = path.Clean("/" + p)
	best, bestLen := "", -1
	for _, m := range f.mounts {
		cp := path.Clean("/" + m.containerPath)
		var rest string
		switch {
		case p == cp:
		case cp == "/":
			rest = p
		case strings.HasPrefix(p, cp+"/"):
			rest = p[len(cp):]
		default:
			continue
		}
		if len(cp) > bestLen {
			best, bestLen = filepath.Join(m.hostPath, filepath.FromSlash(rest)), len(cp)
		}
	}
	return best, bestLen >= 0
}

func (f fileResolver) read(p string) ([]byte, error) {
	if hp, ok := f.hostPath(p); ok {
		st, err := os.Stat(hp)
		if err != nil {
			return nil, err
		}
		if st.IsDir() {
			return nil, errIsDir
		}
		return os.ReadFile(hp)
	}
	if path.Clean(p) == "/etc/hostname" {
		return []byte(f.hostname + "\n"), nil
	}
	return nil, os.ErrNotExist
}

// doneClock spends real time until done is closed, for scripts fed to a container's
// stdin.
type doneClock struct{ done <-chan struct{} }

var errContainerExited = errors.New("container exited")

func (c doneClock) sleep(d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-c.done:
		return errContainerExited
	}
}

func (c doneClock) forever() error {
	<-c.done
	return errContainerExited
}

// realClock spends real time, for execs.
type realClock struct{ ctx context.Context }

func (c realClock) sleep(d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-c.ctx.Done():
		return c.ctx.Err()
	}
}

func (c realClock) forever() error {
	<-c.ctx.Done()
	return c.ctx.Err()
}

// virtualClock adds up a main command's sleeps: output is scheduled at the offset it was
// written at, the exit at the final offset.
type virtualClock struct{ offset time.Duration }

func (c *virtualClock) sleep(d time.Duration) error {
	c.offset += d
	return nil
}

func (c *virtualClock) forever() error { return errForever }
