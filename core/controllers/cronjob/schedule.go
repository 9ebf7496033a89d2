package cronjob

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/robfig/cron/v3"
	batchv1 "k8s.io/api/batch/v1"
)

// tooManyMissed is how many missed start times make the controller warn (TooManyMissedTimes)
// that startingDeadlineSeconds should be set or the clock checked.
const tooManyMissed = 100

// requeueSlack is added to the wait for the next schedule time, so that the sync comes just
// after it rather than a hair before.
const requeueSlack = 100 * time.Millisecond

// parseSchedule parses spec.schedule, standard five fields or a descriptor (@hourly ...),
// in spec.timeZone when set. A schedule may carry its own TZ= or CRON_TZ= prefix (which
// Kubernetes does not officially support: the sync warns).
func parseSchedule(cj *batchv1.CronJob) (cron.Schedule, error) {
	spec := cj.Spec.Schedule
	if tz := cj.Spec.TimeZone; tz != nil && !strings.Contains(spec, "TZ") {
		if _, err := time.LoadLocation(*tz); err != nil {
			return nil, fmt.Errorf("time zone %q: %w", *tz, err)
		}
		spec = "TZ=" + *tz + " " + spec
	}
	sched, err := cron.ParseStandard(spec)
	if err != nil {
		return nil, fmt.Errorf("schedule %q: %w", cj.Spec.Schedule, err)
	}
	return sched, nil
}

// missed is what mostRecent found between the earliest time to consider and now.
type missed struct {
	// earliest is the time the search started from: lastScheduleTime, else creation, moved
	// up to now - startingDeadlineSeconds when asked.
	earliest time.Time
	// recent is the latest schedule time not after now; nil if none came since earliest.
	recent *time.Time
	// count estimates how many schedule times passed.
	count int64
}

// mostRecent finds the latest schedule time in (earliest, now]. It does not walk every
// missed time (a every-minute schedule a year behind is half a million): it measures the
// gap between two consecutive times and jumps close to now.
func mostRecent(cj *batchv1.CronJob, now time.Time, sched cron.Schedule, withDeadline bool) (missed, error) {
	m := missed{earliest: cj.CreationTimestamp.Time}
	if cj.Status.LastScheduleTime != nil {
		m.earliest = cj.Status.LastScheduleTime.Time
	}
	if withDeadline && cj.Spec.StartingDeadlineSeconds != nil {
		if deadline := now.Add(-time.Duration(*cj.Spec.StartingDeadlineSeconds) * time.Second); deadline.After(m.earliest) {
			m.earliest = deadline
		}
	}
	t1 := sched.Next(m.earliest)
	t2 := sched.Next(t1)
	switch {
	case t1.IsZero() || now.Before(t1):
		return m, nil
	case now.Before(t2):
		m.recent, m.count = &t1, 1
		return m, nil
	}
	gap := int64(t2.Sub(t1).Round(time.Second).Seconds())
	if gap < 1 {
		return m, errors.New("time difference between two schedules is less than 1 second")
	}
	m.count = int64(now.Sub(t1).Seconds())/gap + 1
	// Schedules are not evenly spaced (say "0 9 * * 1-5"): start the walk one gap before the
	// estimate, and step to now.
	var recent time.Time
	from := t1.Add(time.Duration((m.count-2)*gap) * time.Second)
	for t := sched.Next(from); !t.IsZero() && !t.After(now); t = sched.Next(t) {
		recent = t
	}
	if !recent.IsZero() {
		m.recent = &recent
	}
	return m, nil
}

// untilNext is how long until the CronJob's next schedule time after the last one that
// passed.
func untilNext(cj *batchv1.CronJob, now time.Time, sched cron.Schedule) time.Duration {
	m, err := mostRecent(cj, now, sched, false)
	from := now
	switch {
	case err != nil:
	case m.recent != nil:
		from = *m.recent
	case m.count == 0:
		from = m.earliest
	}
	return sched.Next(from).Add(requeueSlack).Sub(now)
}

// jobName is the name of the Job for a schedule time: the time in minutes since the epoch
// makes it unique per run, so that a second attempt to start a run fails with AlreadyExists.
func jobName(cj *batchv1.CronJob, scheduled time.Time) string {
	return fmt.Sprintf("%s-%d", cj.Name, scheduled.Unix()/60)
}
