// Command berth-scheduler-cost is the example "cost" scheduler plugin
// (plugins/examples/cost), run by berth's scheduler as an external plugin.
package main

import "berth.dev/berth/plugins/examples/cost"

func main() { cost.Main() }
