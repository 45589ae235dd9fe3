"""Labs: lessons written in Markdown (labs/*.md) that a machine can replay.

A lesson is prose an attendee reads, with the commands they type in ```sh blocks, what they
should see in ```expect blocks, and a ```check script per step that `cowlab lab check` runs to
tell them where they are. `cowlab lab run` replays the commands in one bash session, as a person
would type them, and checks every expectation on the real output. The format is documented in
labs/FORMAT.md; lesson.py parses it, expect.py evaluates expectations, shell.py is the session,
needs.py says what a lab needs, replay.py runs it all.
"""
