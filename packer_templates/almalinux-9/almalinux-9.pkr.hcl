# almalinux-9: boot the AlmaLinux GenericCloud image under QEMU with a NoCloud seed, run the
# provisioners (this folder's dnf-based ones) over SSH as a throwaway build user, record the
# installed packages, seal.
# Not built on the development machine (no access to repo.almalinux.org): see appliance.yaml.
# Written for Debian's packer 1.6.6: HCL2 without `packer init` or required_plugins.
# Every variable without a default is passed by the pipeline (pipeline/builder), as for debian-12.

variable "base_image" {
  type        = string
  description = "the verified upstream cloud image (qcow2) from the pipeline's cache"
}

variable "output_directory" {
  type        = string
  description = "where Packer writes the disk; must not exist yet"
}

variable "vm_name" {
  type        = string
  description = "file name of the output disk"
}

variable "accelerator" {
  type    = string
  default = "kvm"
}

variable "machine_type" {
  type        = string
  default     = "pc"
  description = "QEMU machine type; the pipeline's accelerator probe boots the same machine"
}

variable "cpu_model" {
  type        = string
  default     = "max"
  description = "QEMU -cpu model (host under KVM, max under TCG), the one the probe proved"
}

variable "ssh_timeout" {
  type        = string
  default     = "30m"
  description = "how long to wait for the guest's SSH (short under KVM: the build then retries under TCG)"
}

variable "cpus" {
  type    = number
  default = 2
}

variable "memory" {
  type    = number
  default = 2048
}

variable "seed_dir" {
  type        = string
  description = "NoCloud seed folder holding meta-data and user-data (served as the cidata CD)"
}

variable "ssh_username" {
  type    = string
  default = "vmi-build"
}

variable "ssh_private_key_file" {
  type        = string
  description = "the per-build ed25519 key the seed authorises for ssh_username"
}

variable "scripts" {
  type        = list(string)
  description = "the appliance's provisioners, in order (the last one seals the image)"
}

variable "package_list" {
  type        = string
  description = "host path that receives the installed package list"
}

variable "serial_log" {
  type        = string
  description = "host file that receives the guest's serial console"
}

source "qemu" "appliance" {
  iso_url            = var.base_image
  iso_checksum       = "none" # base.image.checksum is verified by the pipeline when it fetches the image
  disk_image         = true
  disk_size          = "10G"
  format             = "qcow2"
  disk_interface     = "virtio"
  disk_discard       = "unmap"
  disk_detect_zeroes = "unmap"
  accelerator        = var.accelerator
  machine_type       = var.machine_type
  cpus               = var.cpus
  memory             = var.memory
  headless           = true
  vnc_bind_address   = "127.0.0.1"
  output_directory   = var.output_directory
  vm_name            = var.vm_name
  cd_files           = ["${var.seed_dir}/meta-data", "${var.seed_dir}/user-data"]
  cd_label           = "cidata"
  qemuargs = [
    ["-cpu", var.cpu_model],
    # Packer's own port forward listens on every interface: keep the build's SSH on loopback
    ["-netdev", "user,id=user.0,hostfwd=tcp:127.0.0.1:{{ .SSHHostPort }}-:22"],
    ["-serial", "file:${var.serial_log}"],
  ]
  communicator           = "ssh"
  ssh_username           = var.ssh_username
  ssh_private_key_file   = var.ssh_private_key_file
  ssh_timeout            = var.ssh_timeout
  ssh_handshake_attempts = 400
  # seal.sh leaves the last steps (remove the build user, trim) in /run/vmi-finish.sh
  shutdown_command = "sudo -n /bin/sh /run/vmi-finish.sh"
  shutdown_timeout = "10m"
}

build {
  sources = ["source.qemu.appliance"]

  provisioner "shell" {
    # cloud-init (which created the build user from the seed) must be done before anything else
    inline = ["cloud-init status --wait >/dev/null || cloud-init status --long"]
  }

  provisioner "shell" {
    scripts          = var.scripts
    execute_command  = "chmod +x {{ .Path }}; sudo -n env {{ .Vars }} {{ .Path }}"
    environment_vars = ["BUILD_USER=${var.ssh_username}", "LANG=C.UTF-8"]
  }

  provisioner "shell" {
    # the SBOM: every installed package (status, name, version, arch, source), on tmpfs only
    inline = ["rpm -qa --queryformat 'ii \\t%%{NAME}\\t%|EPOCH?{%%{EPOCH}:}|%%{VERSION}-%%{RELEASE}\\t%%{ARCH}\\t%%{SOURCERPM}\\n' > /dev/shm/vmi-packages.tsv"]
  }

  provisioner "file" {
    direction   = "download"
    source      = "/dev/shm/vmi-packages.tsv"
    destination = var.package_list
  }
}
