#!/usr/bin/env bash
# Runs on the Chameleon node (Ubuntu 24.04, user cc): Docker with the compose plugin and, for GPUs,
# the container runtime; then opens chameleon.open_ports in firewalld, which on Chameleon's images
# lets in only SSH (bare metal has no security groups), and, on a multi-node lease, trusts the other
# nodes' private addresses (REPROSTACK_PEERS, space-separated): torchrun's rendezvous and the
# collective backend (NCCL, gloo) use ports of their own choosing. Idempotent: what is already there
# is left alone. Usage: [REPROSTACK_PEERS='ADDR...'] node_setup.sh nvidia|amd|cpu [PORT...]
set -euo pipefail
accelerator=${1:?accelerator: nvidia, amd or cpu}
shift
for port in "$@"; do
    case "$port" in
        ''|*[!0-9]*) echo "node_setup: port '$port' is not a number" >&2; exit 2 ;;
    esac
done
read -r -a peers <<< "${REPROSTACK_PEERS:-}"
for peer in "${peers[@]}"; do
    case "$peer" in
        ''|*[!0-9.]*) echo "node_setup: peer '$peer' is not an IPv4 address" >&2; exit 2 ;;
    esac
done
if ! command -v docker >/dev/null 2>&1; then
    sudo apt-get update -q
    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io docker-compose-v2
    sudo usermod -aG docker "$USER"
fi
case "$accelerator" in
    nvidia)
        if ! command -v nvidia-ctk >/dev/null 2>&1; then
            # NVIDIA's signed apt repository for the container toolkit (the CUDA image has the driver).
            curl -fsSL https://nvidia.github.io/libnvidia-container/gpgkey \
                | sudo gpg --dearmor -o /usr/share/keyrings/nvidia-container-toolkit-keyring.gpg
            curl -fsSL https://nvidia.github.io/libnvidia-container/stable/deb/nvidia-container-toolkit.list \
                | sed 's#deb https://#deb [signed-by=/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg] https://#' \
                | sudo tee /etc/apt/sources.list.d/nvidia-container-toolkit.list >/dev/null
            sudo apt-get update -q && sudo apt-get install -y -q nvidia-container-toolkit
            sudo nvidia-ctk runtime configure --runtime=docker && sudo systemctl restart docker
        fi ;;
    amd)
        # The ROCm image has the driver; containers need the render and video groups.
        sudo usermod -aG render,video "$USER" ;;
    cpu) ;;
    *) echo "node_setup: accelerator '$accelerator' is not known; accepted: nvidia, amd, cpu" >&2; exit 2 ;;
esac
if [ "$#" -gt 0 ] || [ "${#peers[@]}" -gt 0 ]; then
    if command -v firewall-cmd >/dev/null 2>&1; then
        for port in "$@"; do
            sudo firewall-cmd --quiet --permanent --add-port="$port/tcp"
        done
        for peer in "${peers[@]}"; do
            sudo firewall-cmd --quiet --permanent --zone=trusted --add-source="$peer"
        done
        sudo firewall-cmd --quiet --reload
        [ "$#" -eq 0 ] || echo "node_setup: firewalld lets in tcp $* (and SSH)"
        [ "${#peers[@]}" -eq 0 ] || echo "node_setup: firewalld trusts the other nodes: ${peers[*]}"
    else
        echo "node_setup: no firewalld on this node; tcp $* and the other nodes are governed by the site"
    fi
fi
echo "node_setup: docker $(docker --version 2>/dev/null | cut -d' ' -f3 | tr -d ,) ready for $accelerator"
