package cronjob

import (
	"testing"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func at(s string) time.Time {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		panic(err)
	}
	return t
}

func TestMostRecent(t *testing.T) {
	tests := []struct {
		name         string
		schedule     string
		timeZone     string
		created      string
		last         string // lastScheduleTime, if any
		deadline     *int64
		now          string
		want         string // "" for none
		wantMany     bool
		withDeadline bool
	}{
		{name: "not yet due", schedule: "*/1 * * * *", created: "2026-12-01T10:00:30Z", now: "2026-12-01T10:00:50Z"},
		{name: "first run due", schedule: "*/1 * * * *", created: "2026-12-01T10:00:30Z", now: "2026-12-01T10:01:10Z", want: "2026-12-01T10:01:00Z"},
		{name: "exactly on time", schedule: "*/1 * * * *", created: "2026-12-01T10:00:30Z", now: "2026-12-01T10:01:00Z", want: "2026-12-01T10:01:00Z"},
		{name: "several missed: the latest", schedule: "*/1 * * * *", created: "2026-12-01T10:00:30Z", now: "2026-12-01T10:05:10Z", want: "2026-12-01T10:05:00Z"},
		{name: "already ran", schedule: "*/1 * * * *", created: "2026-12-01T09:00:00Z", last: "2026-12-01T10:05:00Z", now: "2026-12-01T10:05:30Z"},
		{name: "from lastScheduleTime", schedule: "*/5 * * * *", created: "2026-12-01T09:00:00Z", last: "2026-12-01T10:05:00Z", now: "2026-12-01T10:12:00Z", want: "2026-12-01T10:10:00Z"},
		{name: "too many missed", schedule: "*/1 * * * *", created: "2026-11-29T10:00:00Z", now: "2026-12-01T10:00:30Z", want: "2026-12-01T10:00:00Z", wantMany: true},
		{name: "deadline bounds the search", schedule: "*/1 * * * *", created: "2026-11-29T10:00:00Z", deadline: ptr[int64](90), withDeadline: true, now: "2026-12-01T10:00:30Z", want: "2026-12-01T10:00:00Z"},
		{name: "deadline passed for the hourly run", schedule: "0 * * * *", created: "2026-12-01T08:00:00Z", last: "2026-12-01T09:00:00Z", deadline: ptr[int64](60), withDeadline: true, now: "2026-12-01T10:05:00Z"},
		{name: "@hourly", schedule: "@hourly", timeZone: "UTC", created: "2026-12-01T10:20:00Z", now: "2026-12-01T12:10:00Z", want: "2026-12-01T12:00:00Z"},
		{name: "weekdays over a weekend", schedule: "0 9 * * 1-5", timeZone: "UTC", created: "2026-11-01T00:00:00Z", last: "2026-12-04T09:00:00Z", now: "2026-12-07T08:00:00Z"},
		{name: "uneven gaps walk back far enough", schedule: "0 9 * * 1-5", timeZone: "UTC", created: "2026-11-01T00:00:00Z", last: "2026-11-30T09:00:00Z", now: "2026-12-08T09:30:00Z", want: "2026-12-08T09:00:00Z"},
		{name: "timeZone New York (EDT)", schedule: "0 9 * * *", timeZone: "America/New_York", created: "2026-07-01T00:00:00Z", now: "2026-07-01T14:00:00Z", want: "2026-07-01T13:00:00Z"},
		{name: "timeZone New York (EST)", schedule: "0 9 * * *", timeZone: "America/New_York", created: "2026-12-01T00:00:00Z", now: "2026-12-01T14:30:00Z", want: "2026-12-01T14:00:00Z"},
		{name: "CRON_TZ in the schedule", schedule: "CRON_TZ=Asia/Tokyo 0 9 * * *", created: "2026-06-30T00:00:00Z", now: "2026-07-01T01:30:00Z", want: "2026-07-01T00:00:00Z"},
		{name: "timeZone Kolkata half hour", schedule: "0 * * * *", timeZone: "Asia/Kolkata", created: "2026-12-01T10:00:00Z", now: "2026-12-01T10:45:00Z", want: "2026-12-01T10:30:00Z"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cj := &batchv1.CronJob{
				ObjectMeta: metav1.ObjectMeta{CreationTimestamp: metav1.NewTime(at(tc.created))},
				Spec:       batchv1.CronJobSpec{Schedule: tc.schedule, StartingDeadlineSeconds: tc.deadline},
			}
			if tc.timeZone != "" {
				cj.Spec.TimeZone = &tc.timeZone
			}
			if tc.last != "" {
				last := metav1.NewTime(at(tc.last))
				cj.Status.LastScheduleTime = &last
			}
			sched, err := parseSchedule(cj)
			if err != nil {
				t.Fatal(err)
			}
			m, err := mostRecent(cj, at(tc.now), sched, tc.withDeadline)
			if err != nil {
				t.Fatal(err)
			}
			got := ""
			if m.recent != nil {
				got = m.recent.UTC().Format(time.RFC3339)
			}
			if got != tc.want {
				t.Errorf("most recent = %q, want %q", got, tc.want)
			}
			if many := m.count > tooManyMissed; many != tc.wantMany {
				t.Errorf("missed %d: too many = %v, want %v", m.count, many, tc.wantMany)
			}
		})
	}
}

func TestUntilNext(t *testing.T) {
	last := metav1.NewTime(at("2026-12-01T10:05:00Z"))
	cj := &batchv1.CronJob{
		ObjectMeta: metav1.ObjectMeta{CreationTimestamp: metav1.NewTime(at("2026-12-01T09:00:00Z"))},
		Spec:       batchv1.CronJobSpec{Schedule: "*/5 * * * *"},
		Status:     batchv1.CronJobStatus{LastScheduleTime: &last},
	}
	sched, err := parseSchedule(cj)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := untilNext(cj, at("2026-12-01T10:07:00Z"), sched), 3*time.Minute+requeueSlack; got != want {
		t.Errorf("untilNext = %v, want %v", got, want)
	}
	// Runs missed since: the next time after now, not after the last run.
	if got, want := untilNext(cj, at("2026-12-01T10:21:00Z"), sched), 4*time.Minute+requeueSlack; got != want {
		t.Errorf("untilNext after missed runs = %v, want %v", got, want)
	}
}

func TestParseScheduleErrors(t *testing.T) {
	for _, tc := range []struct{ schedule, tz string }{
		{"* * *", ""},
		{"61 * * * *", ""},
		{"@sometimes", ""},
		{"0 9 * * *", "Mars/Olympus_Mons"},
	} {
		cj := &batchv1.CronJob{Spec: batchv1.CronJobSpec{Schedule: tc.schedule}}
		if tc.tz != "" {
			cj.Spec.TimeZone = &tc.tz
		}
		if _, err := parseSchedule(cj); err == nil {
			t.Errorf("parseSchedule(%q, tz %q) succeeded, want an error", tc.schedule, tc.tz)
		}
	}
}

func TestJobName(t *testing.T) {
	cj := &batchv1.CronJob{ObjectMeta: metav1.ObjectMeta{Name: "nightly"}}
	if got := jobName(cj, at("2026-12-01T10:05:00Z")); got != "nightly-29935325" {
		t.Errorf("jobName = %q", got)
	}
}

func ptr[T any](v T) *T { return &v }
