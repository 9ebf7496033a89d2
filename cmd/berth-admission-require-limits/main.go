// Command berth-admission-require-limits is the example "require-limits" admission plugin
// (plugins/examples/requirelimits), run by berth's API server as an external plugin.
package main

import "berth.dev/berth/plugins/examples/requirelimits"

func main() { requirelimits.Main() }
