// Command berth-admission-require-limits is the example "require-limits" admission plugin
// (plugins/examples/require-limits), run by berth's API server as an external plugin.
package main

import requirelimits "berth.dev/berth/plugins/examples/require-limits"

func main() { requirelimits.Main() }
