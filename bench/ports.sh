# Sourced by the bench scripts.
# ports N: N free loopback ports, distinct, below the ephemeral range (so that
# outgoing connections of other programs do not take them meanwhile).
ports() {
    python3 -c 'import random,socket,sys
out=set()
while len(out)<int(sys.argv[1]):
    p=random.randrange(20000,32000)
    s=socket.socket()
    try: s.bind(("127.0.0.1",p)); out.add(p)
    except OSError: pass
    finally: s.close()
print(" ".join(map(str,sorted(out))))' "$1"
}
