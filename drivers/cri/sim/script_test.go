package sim

import (
	"slices"
	"testing"
)

func TestParseScript(t *testing.T) {
	env := map[string]string{"A": "one", "B": "two words"}
	lookup := func(k string) string { return env[k] }
	for _, tc := range []struct {
		src  string
		want [][]string // words of each command
		ops  []string   // the operator before each command
	}{
		{"echo hi", [][]string{{"echo", "hi"}}, []string{""}},
		{"echo $A; exit 3", [][]string{{"echo", "one"}, {"exit", "3"}}, []string{"", ";"}},
		{`echo "$B" '$A' ${A}x`, [][]string{{"echo", "two words", "$A", "onex"}}, []string{""}},
		{"true && echo a || echo b", [][]string{{"true"}, {"echo", "a"}, {"echo", "b"}}, []string{"", "&&", "||"}},
		{`echo "a \"q\" b" \$A`, [][]string{{"echo", `a "q" b`, "$A"}}, []string{""}},
		{"echo a\nsleep 1;", [][]string{{"echo", "a"}, {"sleep", "1"}}, []string{"", ";"}},
		{"echo $UNSET$A", [][]string{{"echo", "one"}}, []string{""}},
		{"echo '' x", [][]string{{"echo", "", "x"}}, []string{""}},
	} {
		cmds, err := parseScript(tc.src, lookup)
		if err != nil {
			t.Errorf("%q: %v", tc.src, err)
			continue
		}
		var words [][]string
		var ops []string
		for _, c := range cmds {
			words = append(words, c.words)
			ops = append(ops, c.after)
		}
		if !slices.EqualFunc(words, tc.want, slices.Equal) || !slices.Equal(ops, tc.ops) {
			t.Errorf("%q: %q %q, want %q %q", tc.src, words, ops, tc.want, tc.ops)
		}
	}
	for _, bad := range []string{`echo "open`, "echo 'open", "&& echo", "echo a &&", "echo a | cat", "echo > f"} {
		if _, err := parseScript(bad, lookup); err == nil {
			t.Errorf("%q parsed; want a syntax error", bad)
		}
	}
}
