import sys

try:
    from .cli import main
except KeyboardInterrupt:  # Ctrl-C while importing (main() handles it from then on)
    print("Interrupted.", file=sys.stderr)
    sys.exit(130)

main()
